"""A third-party XMPP client (slixmpp) against longlink, driven by the
`interop` test: log in over STARTTLS or direct TLS with a given SASL
mechanism, ping the server, expect service-unavailable for an IQ nobody
serves, send a message to a peer and wait for its answer, disconnect.
Prints one JSON object with what happened; exits 0 if every step passed.

usage: slix_client.py HOST PORT starttls|tls JID PASSWORD MECHANISM CA PEER
"""

import asyncio
import json
import sys
from pathlib import Path

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password, mechanism, peer):
        super().__init__(jid, password, sasl_mech=mechanism)
        self.peer = peer
        self.result = {"session": False}
        self.answer = asyncio.get_event_loop().create_future()
        self.done = asyncio.get_event_loop().create_future()
        self.register_plugin("xep_0199")
        self.add_event_handler("session_start", self.on_session)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("failed_auth", self.on_failed_auth)
        self.add_event_handler("disconnected", self.on_disconnected)

    def on_failed_auth(self, _):
        self.result["auth"] = "failed"
        self.disconnect()

    def on_disconnected(self, _):
        if not self.done.done():
            self.done.set_result(True)

    def on_message(self, msg):
        if msg["type"] in ("chat", "normal") and msg["body"] and not self.answer.done():
            self.answer.set_result((str(msg["from"]), msg["body"]))

    async def on_session(self, _):
        self.result["session"] = True
        self.result["jid"] = str(self.boundjid)
        self.send_presence()
        try:
            await self["xep_0199"].ping(self.boundjid.domain, timeout=10)
            self.result["ping"] = "ok"
        except (IqError, IqTimeout) as e:
            self.result["ping"] = repr(e)
        iq = self.make_iq_get(queryxmlns="urn:example:nothing-serves-this", ito=self.boundjid.domain)
        try:
            await iq.send(timeout=10)
            self.result["unsupported_iq"] = "answered with a result"
        except IqError as e:
            self.result["unsupported_iq"] = e.iq["error"]["condition"]
        except IqTimeout:
            self.result["unsupported_iq"] = "timeout"
        self.send_message(mto=self.peer, mbody="hello from slixmpp", mtype="chat")
        try:
            sender, body = await asyncio.wait_for(self.answer, 15)
            self.result["answer_from"] = sender
            self.result["answer"] = body
        except asyncio.TimeoutError:
            self.result["answer"] = None
        self.disconnect()


async def main():
    host, port, mode, jid, password, mechanism, ca, peer = sys.argv[1:9]
    client = Client(jid, password, mechanism, peer)
    client.ca_certs = Path(ca)
    client.enable_plaintext = False
    client.enable_direct_tls = mode == "tls"
    client.enable_starttls = mode == "starttls"
    client.connect(host, int(port))
    try:
        await asyncio.wait_for(client.done, 45)
        client.result["disconnected"] = "clean"
    except asyncio.TimeoutError:
        client.result["disconnected"] = "timeout"
    print(json.dumps(client.result))
    ok = (
        client.result.get("session")
        and client.result.get("ping") == "ok"
        and client.result.get("unsupported_iq") == "service-unavailable"
        and client.result.get("answer") is not None
        and client.result.get("disconnected") == "clean"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    asyncio.run(main())
