"""The Python binding of longlink-ffi end to end (run by tests/ffi.rs).

Usage: smoke.py BINDINGS_DIR SERVER CA_FILE DOMAIN PASSWORD

BINDINGS_DIR holds the generated module (longlink_ffi.py) and the library
it loads; SERVER is the balancer of a running deployment where `alice` and
`bob` exist with PASSWORD. Alice logs in without a resource (SASL2 and
Bind2 in one round trip) and reads her events with `next_event()` and
`drain_events()`, Bob with an `EventListener` whose first call throws;
they chat, Alice's messages report their states up
to delivered, her connection moves (network_changed) and Bob goes inactive
and back, and roster, history, ping and push registration go through the
binding. Prints one line per step and "ffi smoke: ok" at the end; exits
non-zero on the first failure.
"""

import asyncio
import os
import sys
import time
import traceback

sys.path.insert(0, sys.argv[1])
import longlink_ffi as ll  # noqa: E402

SERVER, CA, DOMAIN, PASSWORD = sys.argv[2:6]
STEP_TIMEOUT = 20.0
ALL_TIMEOUT = 90.0


def step(text):
    print(f"step: {text}", flush=True)


def bare(jid):
    return jid.split("/", 1)[0]


def options(user, resource, tag):
    return ll.ConnectOptions(
        server=SERVER,
        jid=f"{user}@{DOMAIN}",
        password=PASSWORD,
        trust=ll.Trust.CA_FILE(path=CA),
        resource=resource,
        tag=tag,
    )


async def login(user, resource, tag=None):
    """Connects, retrying while the deployment is still starting."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return await ll.Client.connect(options(user, resource, tag))
        except (ll.LonglinkError.Unreachable, ll.LonglinkError.Timeout,
                ll.LonglinkError.Disconnected) as e:
            if time.monotonic() > deadline:
                raise
            print(f"retrying login of {user}: {e!r}", flush=True)
            await asyncio.sleep(0.3)


class Inbox(ll.EventListener):
    """Bob's listener: hands each event, from the library's thread, to the
    asyncio loop; throws once, after handing over the first (the library
    must go on delivering)."""

    def __init__(self, loop):
        self.loop = loop
        self.queue = asyncio.Queue()
        self.thrown = False

    def on_event(self, event):
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        if not self.thrown:
            self.thrown = True
            raise RuntimeError("a listener's bug (thrown on purpose by smoke.py)")

    async def next(self):
        return await asyncio.wait_for(self.queue.get(), STEP_TIMEOUT)


async def next_of(get_event, accept, what):
    """The first event `accept` takes (returning not None), skipping others."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {what} within {STEP_TIMEOUT} s")
        event = await asyncio.wait_for(get_event(), left)
        if event is None:
            raise AssertionError(f"the session ended before {what}")
        # on loopback nothing is lost: a moved connection is not a new one
        if event.is_CONNECTION_LOST() or event.is_RECONNECTED() or event.is_STREAM_ERROR():
            raise AssertionError(f"{event} while waiting for {what}")
        found = accept(event)
        if found is not None:
            return found


def body_of(body):
    def accept(event):
        if isinstance(event, ll.Event.MESSAGE_RECEIVED) and event.message.body == body:
            return event.message
        return None
    return accept


async def main():
    alice = await login("alice", None, tag="smoke")
    bob = await login("bob", "tablet")
    try:
        await chat(alice, bob)
    finally:
        # (on a failure too: no session, nor the listener's thread, is
        # left running while the interpreter exits)
        await alice.disconnect()
        await bob.disconnect()


async def chat(alice, bob):
    loop = asyncio.get_running_loop()
    # no resource asked for: Bind2 bound tag/random in the SASL2 round trip
    assert alice.jid().startswith(f"alice@{DOMAIN}/smoke/"), alice.jid()
    assert alice.used_sasl2(), "alice did not log in with SASL2"
    assert bob.jid() == f"bob@{DOMAIN}/tablet", bob.jid()
    step(f"connected through {SERVER} as {alice.jid()} and {bob.jid()}")

    inbox = Inbox(loop)
    bob.set_event_listener(inbox)
    try:
        await bob.next_event()
        raise AssertionError("next_event beside a listener")
    except ll.LonglinkError.EventsTaken:
        pass
    try:
        bob.drain_events()
        raise AssertionError("drain_events beside a listener")
    except ll.LonglinkError.EventsTaken:
        pass
    await alice.send_presence(0)
    await bob.send_presence(0)

    # Alice -> Bob: received, and its states go up to delivered (Bob's
    # library sends the receipt)
    sent_id = await alice.send_message(bob.jid(), "hello from python")
    got = await next_of(inbox.next, body_of("hello from python"), "alice's message at bob")
    assert bare(got.from_jid) == f"alice@{DOMAIN}", got.from_jid
    assert got.kind == "chat", got.kind
    states = []

    def state_of(event):
        if isinstance(event, ll.Event.MESSAGE_STATE_CHANGED) and event.id == sent_id:
            if event.state.is_FAILED():
                raise AssertionError(f"message failed: {event.state.reason}")
            states.append(next(n for n in ("QUEUED", "SENT", "ACKNOWLEDGED", "DELIVERED")
                               if getattr(event.state, f"is_{n}")()))
            if event.state.is_DELIVERED():
                return True
        return None
    await next_of(alice.next_event, state_of, "the delivered state")
    # written before confirmed by Bob's device (the server's ack may come
    # before or after the receipt)
    assert states[0] in ("QUEUED", "SENT") and states[-1] == "DELIVERED", states
    assert inbox.thrown
    step(f"alice -> bob received (after the listener threw); states {states}")

    # Bob -> Alice, read with next_event
    await bob.send_message(alice.jid(), "hi alice")
    await next_of(alice.next_event, body_of("hi alice"), "bob's reply at alice")
    step("bob -> alice received")

    # events waiting are taken without waiting (before saving a token)
    await bob.send_message(alice.jid(), "drain me")
    drained = []
    deadline = time.monotonic() + STEP_TIMEOUT
    while not any(isinstance(e, ll.Event.MESSAGE_RECEIVED) and e.message.body == "drain me"
                  for e in drained):
        assert time.monotonic() < deadline, f"drain_events gave {drained}"
        await asyncio.sleep(0.05)
        drained += alice.drain_events()
    step(f"drain_events: {len(drained)} events, the message among them")

    # Alice's network changes: the connection moves, the chat goes on
    alice.network_changed()
    await alice.send_message(bob.jid(), "after the move")
    await next_of(inbox.next, body_of("after the move"), "a message after network_changed")
    assert (await alice.ping()) >= 0
    step("network_changed: the connection moved and the chat went on")

    # Bob goes to the background and back; messages still come at once
    await bob.set_active(False)
    await alice.send_message(bob.jid(), "while inactive")
    await next_of(inbox.next, body_of("while inactive"), "a message while inactive")
    await bob.set_active(True)
    step("set_active(false) and back")

    # roster
    await alice.set_contact(f"bob@{DOMAIN}", "Bob", ["friends"])
    roster = await alice.roster()
    item = next((i for i in roster if i.jid == f"bob@{DOMAIN}"), None)
    assert item is not None, roster
    assert item.name == "Bob" and item.groups == ["friends"], item
    assert item.subscription == ll.Subscription.NEITHER, item
    step(f"roster: {item.jid} as {item.name} in {item.groups}")

    # history: the conversation is archived
    bodies = []
    deadline = time.monotonic() + STEP_TIMEOUT
    while "after the move" not in bodies:
        assert time.monotonic() < deadline, f"history holds {bodies}"
        page = await alice.history(ll.HistoryQuery(with_jid=f"bob@{DOMAIN}"))
        bodies = [m.message.body for m in page.messages]
        await asyncio.sleep(0.2)
    assert "hello from python" in bodies and "hi alice" in bodies, bodies
    step(f"history with bob: {len(bodies)} messages")

    # push registration: the deployment has no app server, so a
    # registration is refused with a typed error, whichever applies
    supported = await bob.push_supported()
    try:
        await bob.enable_push("push.example.org", "device-1",
                              [ll.PushOption(name="secret", value="s3cret")])
        raise AssertionError("push enabled without an app server")
    except ll.LonglinkError.PushAppServerUnreachable as e:
        assert supported, "unreachable app server, yet push not offered"
        assert e.app_server == "push.example.org", e
    except ll.LonglinkError.PushNotSupported:
        assert not supported, "push offered, yet refused as unsupported"
    try:
        await bob.enable_push("push.example.org", "", [])
        raise AssertionError("an empty node accepted")
    except ll.LonglinkError.PushInvalid:
        pass
    try:
        await bob.disable_push("push.example.org", None)
        assert supported, "push disabled, yet not offered"
    except ll.LonglinkError.PushNotSupported:
        assert not supported, "push offered, yet disabling refused as unsupported"
    step(f"push: supported={supported}, registrations refused with typed errors")

    # resumption token, then logout: both sessions end
    token = alice.resumption()
    assert token is not None and token.id, token
    await alice.disconnect()
    await bob.disconnect()
    assert alice.resumption() is None
    # the events end: next_event returns None, the listener's last event
    # is DISCONNECTED (and its thread ends)
    while (await asyncio.wait_for(alice.next_event(), STEP_TIMEOUT)) is not None:
        pass
    await next_of(inbox.next, lambda e: True if e.is_DISCONNECTED() else None,
                  "the listener's DISCONNECTED")
    try:
        await alice.send_message(bob.jid(), "too late")
        raise AssertionError("sent after disconnect")
    except ll.LonglinkError.Closed:
        pass
    step("disconnected")


try:
    asyncio.run(asyncio.wait_for(main(), ALL_TIMEOUT))
    print("ffi smoke: ok", flush=True)
    status = 0
except BaseException:  # noqa: B036 (reported, then the exit below)
    traceback.print_exc()
    status = 1
sys.stdout.flush()
sys.stderr.flush()
# Exit without finalizing the interpreter: the library's runtime thread
# that woke the last call may still be inside the wake-up callback (it
# lets go of the GIL to write to asyncio's self-pipe), and CPython ends a
# thread that takes the GIL back during finalization with a forced unwind,
# which aborts where it crosses Rust frames. (The listener's thread is not
# at risk: `disconnect` returns after its last callback.)
os._exit(status)
