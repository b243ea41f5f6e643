"""A push app server (XEP-0357) written with a third-party library:
slixmpp's ComponentXMPP connects to longlink's core as an external
component (XEP-0114: stream to NAME, SHA-1 handshake with SECRET), driven
by the `interop` test.

It answers every pubsub publish it gets with an IQ result, after checking
its shape: an IQ set from a bare JID to NAME, one publish of one item
holding a <notification xmlns='urn:xmpp:push:0'> whose form is the
urn:xmpp:push:summary form, and (if any) publish-options whose FORM_TYPE is
pubsub#publish-options. It prints one JSON line per event, flushed:

  {"event": "connected"}            the handshake was accepted
  {"event": "publish", ...}         a publish: from, to, node, summary
                                    (fields), publish_options (fields),
                                    problems (what failed the checks;
                                    empty if none), answered ("result")
  {"event": "disconnected"}         after stdin closed (or said "quit")

and exits 0 once disconnected (1 if it never connected).

usage: slix_push_component.py HOST PORT NAME SECRET
"""

import asyncio
import json
import sys

import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

PUBSUB = "http://jabber.org/protocol/pubsub"
PUSH = "urn:xmpp:push:0"
DATA = "jabber:x:data"
SUMMARY = "urn:xmpp:push:summary"
PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
COMPONENT = "jabber:component:accept"


def say(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def form_fields(x, problems, what):
    """A data form's fields as {var: value} (the first value of each)."""
    fields = {}
    if x is None:
        problems.append(f"{what}: no jabber:x:data form")
        return fields
    if x.get("type") != "submit":
        problems.append(f"{what}: form type {x.get('type')!r}, not submit")
    for field in x.findall("{%s}field" % DATA):
        value = field.find("{%s}value" % DATA)
        fields[field.get("var")] = value.text if value is not None else None
    return fields


class AppServer(slixmpp.ComponentXMPP):
    def __init__(self, name, secret):
        super().__init__(name, secret)
        self.name = name
        self.connected = asyncio.get_event_loop().create_future()
        self.gone = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", self.on_session)
        self.add_event_handler("disconnected", self.on_disconnected)
        self.register_handler(
            Callback(
                "push publish",
                MatchXPath("{%s}iq/{%s}pubsub" % (COMPONENT, PUBSUB)),
                self.on_pubsub,
            )
        )

    def on_session(self, _):
        if not self.connected.done():
            self.connected.set_result(True)
            say("connected")

    def on_disconnected(self, _):
        if not self.gone.done():
            self.gone.set_result(True)

    def on_pubsub(self, iq):
        xml = iq.xml
        problems = []
        sender = str(iq["from"])
        if iq["type"] != "set":
            problems.append(f"iq type {iq['type']!r}, not set")
        if iq["from"].resource:
            problems.append(f"from {sender!r} is not a bare JID")
        if str(iq["to"]) != self.name:
            problems.append(f"to {iq['to']!s}, not {self.name}")
        pubsub = xml.find("{%s}pubsub" % PUBSUB)
        publishes = pubsub.findall("{%s}publish" % PUBSUB)
        if len(publishes) != 1:
            problems.append(f"{len(publishes)} publish elements")
        publish = publishes[0] if publishes else None
        node = publish.get("node") if publish is not None else None
        items = publish.findall("{%s}item" % PUBSUB) if publish is not None else []
        if len(items) != 1:
            problems.append(f"{len(items)} items")
        notification = (
            items[0].find("{%s}notification" % PUSH) if items else None
        )
        if notification is None:
            problems.append("no urn:xmpp:push:0 notification")
            summary = {}
        else:
            summary = form_fields(
                notification.find("{%s}x" % DATA), problems, "summary"
            )
            if summary.pop("FORM_TYPE", None) != SUMMARY:
                problems.append("summary FORM_TYPE is not urn:xmpp:push:summary")
            count = summary.get("message-count")
            if count is not None and not count.isdigit():
                problems.append(f"message-count {count!r} is not a number")
        options = {}
        element = pubsub.find("{%s}publish-options" % PUBSUB)
        if element is not None:
            options = form_fields(
                element.find("{%s}x" % DATA), problems, "publish-options"
            )
            if options.pop("FORM_TYPE", None) != PUBLISH_OPTIONS:
                problems.append("publish-options FORM_TYPE is not pubsub#publish-options")
        iq.reply().send()
        say(
            "publish",
            id=iq["id"],
            to=str(iq["to"]),
            node=node,
            summary=summary,
            publish_options=options,
            problems=problems,
            answered="result",
            **{"from": sender},
        )


async def run(host, port, name, secret):
    app = AppServer(name, secret)
    app.connect(host, int(port))
    try:
        await asyncio.wait_for(app.connected, 30)
    except asyncio.TimeoutError:
        say("error", error="the handshake was not accepted within 30 s")
        return 1
    # serve until the test closes stdin (or says "quit")
    loop = asyncio.get_event_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == "quit":
            break
    app.disconnect()
    await asyncio.wait_for(app.gone, 15)
    say("disconnected")
    return 0


def main():
    host, port, name, secret = sys.argv[1:5]
    try:
        code = asyncio.run(run(host, port, name, secret))
    except Exception as e:  # noqa: BLE001
        say("error", error=repr(e))
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
