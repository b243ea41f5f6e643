"""Group chat (XEP-0045) with a third-party client (slixmpp), driven by
the `interop` test: two slixmpp clients log in over STARTTLS. The first
joins a new room, accepts the default configuration (an instant room),
and says three things; the second joins asking for history, gets those
three with their delay stamps, sees both occupants, and says something
the first receives. Both leave. Prints one JSON object with what
happened; exits 0 if every step passed.

usage: slix_muc.py HOST PORT DOMAIN CA ROOM
(accounts anna@DOMAIN and ben@DOMAIN, password "secret")
"""

import asyncio
import json
import sys
from pathlib import Path

import slixmpp

MUC_OWNER = "http://jabber.org/protocol/muc#owner"


class Member(slixmpp.ClientXMPP):
    def __init__(self, jid, room):
        super().__init__(jid, "secret")
        self.room = room
        self.ready = asyncio.get_event_loop().create_future()
        self.gone = asyncio.get_event_loop().create_future()
        self.said = []
        self.history = []
        self.heard = asyncio.get_event_loop().create_future()
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0045")
        self.register_plugin("xep_0199")
        self.add_event_handler("session_start", self.on_session)
        self.add_event_handler("groupchat_message", self.on_groupchat)
        self.add_event_handler("disconnected", self.on_disconnected)

    async def on_session(self, _):
        self.send_presence()
        if not self.ready.done():
            self.ready.set_result(True)

    def on_disconnected(self, _):
        if not self.gone.done():
            self.gone.set_result(True)

    def on_groupchat(self, msg):
        body = msg["body"]
        if not body:
            return
        if msg["delay"]["stamp"] is not None:
            self.history.append(body)
        else:
            self.said.append((msg["mucnick"], body))
            if body == "hello from ben" and not self.heard.done():
                self.heard.set_result(True)


def connect(client, host, port, ca):
    client.ca_certs = Path(ca)
    client.enable_plaintext = False
    client.enable_direct_tls = False
    client.enable_starttls = True
    client.connect(host, int(port))


async def run(host, port, domain, ca, room):
    result = {}
    anna = Member(f"anna@{domain}/slix", room)
    ben = Member(f"ben@{domain}/slix", room)
    connect(anna, host, port, ca)
    await asyncio.wait_for(anna.ready, 30)
    muc = anna["xep_0045"]
    joined, _subject, _occupants, _history = await muc.join_muc_wait(
        room, "anna", timeout=15, maxstanzas=0
    )
    result["anna_joined"] = str(joined["from"])
    result["anna_affiliation"] = joined["muc"]["affiliation"]
    # accept the default configuration (XEP-0045 §10.1.2, an instant room)
    iq = anna.make_iq_set(ito=room)
    query = slixmpp.xmlstream.ET.Element("{%s}query" % MUC_OWNER)
    form = slixmpp.xmlstream.ET.SubElement(query, "{jabber:x:data}x")
    form.set("type", "submit")
    iq.append(query)
    await iq.send(timeout=15)
    result["instant_room"] = "ok"
    for i in range(3):
        anna.send_message(mto=room, mbody=f"m{i}", mtype="groupchat")
    # (anna's own copies come back: wait for the third)
    for _ in range(100):
        if len(anna.said) >= 3:
            break
        await asyncio.sleep(0.1)
    result["anna_reflections"] = [b for _, b in anna.said]

    connect(ben, host, port, ca)
    await asyncio.wait_for(ben.ready, 30)
    _own, _subject, occupants, history = await ben["xep_0045"].join_muc_wait(
        room, "ben", timeout=15, maxstanzas=10
    )
    result["ben_history"] = [m["body"] for m in history]
    result["ben_occupants_on_join"] = sorted(p["from"].resource for p in occupants)
    result["ben_sees"] = sorted(ben["xep_0045"].get_roster(room))
    # self-ping (XEP-0410): answered for a joined occupant
    try:
        await ben["xep_0199"].ping(f"{room}/ben", timeout=10)
        result["self_ping"] = "ok"
    except Exception as e:  # noqa: BLE001
        result["self_ping"] = repr(e)
    ben.send_message(mto=room, mbody="hello from ben", mtype="groupchat")
    try:
        await asyncio.wait_for(anna.heard, 15)
        result["anna_heard_ben"] = True
    except asyncio.TimeoutError:
        result["anna_heard_ben"] = False
    result["anna_sees"] = sorted(muc.get_roster(room))
    muc.leave_muc(room, "anna")
    ben["xep_0045"].leave_muc(room, "ben")
    await asyncio.sleep(0.5)
    anna.disconnect()
    ben.disconnect()
    await asyncio.wait_for(asyncio.gather(anna.gone, ben.gone), 15)
    result["disconnected"] = "clean"
    return result


async def main():
    host, port, domain, ca, room = sys.argv[1:6]
    try:
        result = await asyncio.wait_for(run(host, port, domain, ca, room), 120)
    except Exception as e:  # noqa: BLE001
        result = {"error": repr(e)}
    print(json.dumps(result))
    ok = (
        result.get("instant_room") == "ok"
        and result.get("ben_history") == ["m0", "m1", "m2"]
        and result.get("anna_heard_ben")
        and result.get("self_ping") == "ok"
        and result.get("disconnected") == "clean"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    asyncio.run(main())
