// @xmpp/client (xmpp.js, npm) against longlink over WebSocket (RFC 7395),
// driven by tests/interop.rs: SASL2 (XEP-0388) with Bind2 (XEP-0386) and
// SM enabled inline and a FAST (XEP-0484) token asked for, a chat with a
// client-sdk user, then a dropped socket (no <close/>) and an inline
// XEP-0198 resumption inside an <authenticate/> with the token, and a new
// login with the token after a clean stop.
//
// usage: node xmppjs_client.mjs SERVICE DOMAIN USERNAME PASSWORD TAG PEER
// (the cluster CA comes in through NODE_EXTRA_CA_CERTS)
//
// stdout: one JSON object per line, {"event": ..., ...}; stdin: the test's
// commands, one per line ("reconnect", "stop", "start", "exit"). Exits 0
// after "exit", 1 on an error or if the test says nothing for 60 s.

import readline from "node:readline";

// (Node < 19 has no global WebCrypto, Node < 22 no global WebSocket without
// --experimental-websocket: `ws` stands in, installed next to @xmpp/client)
if (typeof globalThis.crypto?.randomUUID !== "function") {
  globalThis.crypto = (await import("node:crypto")).webcrypto;
}
let websocketImpl = "native";
if (typeof globalThis.WebSocket !== "function") {
  globalThis.WebSocket = (await import("ws")).WebSocket;
  websocketImpl = "ws";
}
const { client, xml } = await import("@xmpp/client");

const [service, domain, username, password, tag, peer] = process.argv.slice(2);

function emit(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

// An element's attributes as the strings they are on the wire.
function attrs(el) {
  if (!el) return null;
  return Object.fromEntries(
    Object.entries(el.attrs).filter(([k]) => k !== "xmlns").map(([k, v]) => [k, String(v)]),
  );
}

function fail(what, err) {
  emit("error", { what, error: String(err?.stack ?? err) });
  process.exit(1);
}

let idle = setTimeout(() => fail("timeout", "no command from the test for 60 s"), 60_000);

const xmpp = client({ service, domain, username, password, resource: tag });
// (the test decides when to reconnect: the message it sends meanwhile must
// wait in the detached session)
xmpp.reconnect.stop();

xmpp.on("error", (err) => emit("client-error", { error: String(err) }));

const SASL2 = "urn:xmpp:sasl:2";
const BIND2 = "urn:xmpp:bind:0";
const SM = "urn:xmpp:sm:3";
const FAST = "urn:xmpp:fast:0";

// What the server offers and answers, as xmpp.js parsed it.
xmpp.on("nonza", (el) => {
  if (el.is("features", "http://etherx.jabber.org/streams")) {
    const auth = el.getChild("authentication", SASL2);
    const inline = auth?.getChild("inline");
    emit("features", {
      sasl2: !!auth,
      sasl2_mechanisms: auth ? auth.getChildren("mechanism").map((m) => m.text()) : [],
      inline: inline ? inline.getChildElements().map((c) => `${c.getNS()} ${c.name}`) : [],
      bind2_features: inline?.getChild("bind", BIND2)?.getChild("inline")
        ?.getChildren("feature").map((f) => f.attrs.var) ?? [],
      fast_offered: !!inline?.getChild("fast", FAST),
      sasl1: !!el.getChild("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl"),
      legacy_bind: !!el.getChild("bind", "urn:ietf:params:xml:ns:xmpp-bind"),
      sm: !!el.getChild("sm", SM),
    });
  } else if (el.is("success", SASL2)) {
    const bound = el.getChild("bound", BIND2);
    const resumed = el.getChild("resumed", SM);
    emit("success", {
      authorization_identifier: el.getChildText("authorization-identifier"),
      additional_data: !!el.getChild("additional-data"),
      bound: !!bound,
      sm_enabled: attrs(bound?.getChild("enabled", SM)),
      resumed: attrs(resumed),
      failed: !!el.getChild("failed", SM),
      token: !!el.getChild("token", FAST),
    });
  } else if (el.is("failure", SASL2) || el.is("failure", "urn:ietf:params:xml:ns:xmpp-sasl")) {
    emit("sasl-failure", { xml: el.toString() });
  } else if (el.getNS() === "urn:ietf:params:xml:ns:xmpp-sasl") {
    emit("sasl1", { name: el.name });
  } else if (el.is("error", "http://etherx.jabber.org/streams")) {
    emit("stream-error", { xml: el.toString() });
  }
});

// What xmpp.js sent to authenticate.
xmpp.on("send", (el) => {
  if (el.is("authenticate", SASL2)) {
    const bind = el.getChild("bind", BIND2);
    const resume = el.getChild("resume", SM);
    emit("authenticate", {
      mechanism: el.attrs.mechanism,
      user_agent: el.getChild("user-agent")?.attrs.id ?? null,
      bind_tag: bind?.getChildText("tag") ?? null,
      bind_enables: bind ? bind.getChildElements().filter((c) => c.name === "enable").map((c) => c.getNS()) : [],
      resume: attrs(resume),
      fast: !!el.getChild("fast", FAST),
      request_token: !!el.getChild("request-token", FAST),
    });
  } else if (el.is("auth", "urn:ietf:params:xml:ns:xmpp-sasl")) {
    emit("sasl1-auth", { mechanism: el.attrs.mechanism });
  } else if (el.is("iq") && el.getChild("bind", "urn:ietf:params:xml:ns:xmpp-bind")) {
    emit("legacy-bind");
  } else if (el.is("enable", SM) || el.is("resume", SM)) {
    emit("sm-nonza-sent", { name: el.name });
  }
});

xmpp.streamManagement.on("resumed", async () => {
  emit("resumed", { jid: xmpp.jid?.toString(), inbound: xmpp.streamManagement.inbound });
  try {
    await xmpp.send(
      xml("message", { to: peer, type: "chat", id: "xmppjs-2" }, xml("body", {}, "back from xmpp.js")),
    );
  } catch (err) {
    fail("send", err);
  }
});
xmpp.streamManagement.on("fail", (stanza) => emit("sm-fail", { xml: stanza.toString() }));

xmpp.on("disconnect", (info) => emit("disconnected", { clean: info?.clean ?? null }));

xmpp.on("online", async (jid) => {
  emit("online", {
    jid: jid.toString(),
    sm_enabled: xmpp.streamManagement.enabled,
    sm_id: !!xmpp.streamManagement.id,
    fast_mechanism: xmpp.fast.mechanism,
    websocket: websocketImpl,
    node: process.version,
  });
  try {
    await xmpp.send(xml("presence"));
    await xmpp.send(
      xml("message", { to: peer, type: "chat", id: "xmppjs-1" }, xml("body", {}, "hello from xmpp.js")),
    );
  } catch (err) {
    fail("send", err);
  }
});

let answered = false;
xmpp.on("stanza", async (stanza) => {
  if (!stanza.is("message")) return;
  const body = stanza.getChildText("body");
  if (body === null) return;
  emit("message", {
    from: stanza.attrs.from,
    body,
    delay: !!stanza.getChild("delay", "urn:xmpp:delay"),
    inbound: xmpp.streamManagement.inbound,
  });
  if (answered || !body.startsWith("hello back")) return;
  answered = true;
  // wait until the server acknowledged our message, then drop the socket
  // as a lost network would: no <close/>, no </stream:stream>
  const deadline = Date.now() + 10_000;
  while (xmpp.streamManagement.outbound_q.length > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
  }
  emit("dropping", {
    sm_enabled: xmpp.streamManagement.enabled,
    sm_id: xmpp.streamManagement.id,
    unacked: xmpp.streamManagement.outbound_q.length,
    inbound: xmpp.streamManagement.inbound,
  });
  xmpp.socket.end();
});

const commands = readline.createInterface({ input: process.stdin });
commands.on("line", async (line) => {
  clearTimeout(idle);
  idle = setTimeout(() => fail("timeout", "no command from the test for 60 s"), 60_000);
  try {
    if (line === "reconnect") {
      // as @xmpp/reconnect does after a lost connection: the same client
      // object (same SM state, same user-agent id) connects again
      await xmpp.reconnect.reconnect();
      emit("reconnected", { status: xmpp.status, jid: xmpp.jid?.toString() });
    } else if (line === "stop") {
      await xmpp.stop();
      emit("stopped");
    } else if (line === "start") {
      // the same client object (same user-agent id, the token it saved)
      // logs in again: with FAST, not its password
      await xmpp.start();
      emit("started", { jid: xmpp.jid?.toString() });
    } else if (line === "exit") {
      process.exit(0);
    }
  } catch (err) {
    fail(line, err);
  }
});
commands.on("close", () => fail("stdin", "closed"));

try {
  await xmpp.start();
} catch (err) {
  fail("start", err);
}
