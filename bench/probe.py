#!/usr/bin/env python3
"""An independent latency probe: two XMPP clients written from scratch in
Python (asyncio + OpenSSL, none of longlink's or the load tool's code) log in
over STARTTLS with SASL PLAIN and send each other messages at an even rate;
it prints one JSON line with the one-way delivery time (same clock: both
clients live in this process), p50/p99/max in ms. bench/compare.sh runs it
beside the load tool to check the tool's figures against it.

  bench/probe.py --server 127.0.0.1:17471 --domain bench.test --ca ca.pem \
      --users bench998,bench999 --password bench --rate 50 --secs 20
"""
import argparse, asyncio, base64, json, re, ssl, sys, time

HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' to='{}' version='1.0'>")


class Client:
    def __init__(self, reader, writer):
        self.r, self.w, self.buf = reader, writer, b""

    async def until(self, pattern, timeout=15):
        """Reads until `pattern` (a regex over bytes) matches; returns the match
        and drops everything up to its end from the buffer."""
        rx = re.compile(pattern, re.S)
        async def go():
            while True:
                m = rx.search(self.buf)
                if m:
                    self.buf = self.buf[m.end():]
                    return m
                data = await self.r.read(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                self.buf += data
        return await asyncio.wait_for(go(), timeout)

    async def send(self, text):
        self.w.write(text.encode())
        await self.w.drain()


async def login(host, port, domain, ca, user, password):
    reader, writer = await asyncio.open_connection(host, port)
    c = Client(reader, writer)
    await c.send(HEADER.format(domain))
    await c.until(rb"</stream:features>")
    await c.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    await c.until(rb"<proceed[^>]*/>")
    ctx = ssl.create_default_context(cafile=ca)
    await writer.start_tls(ctx, server_hostname=domain)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        import socket
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.buf = b""
    await c.send(HEADER.format(domain))
    await c.until(rb"</stream:features>")
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    await c.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
    await c.until(rb"<success[^>]*(/>|</success>)")
    await c.send(HEADER.format(domain))
    await c.until(rb"</stream:features>")
    await c.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                 "<resource>probe</resource></bind></iq>")
    await c.until(rb"<jid>[^<]*</jid>")
    await c.send("<presence/>")
    return c


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--domain", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--users", required=True, help="two accounts, comma-separated")
    ap.add_argument("--password", required=True)
    ap.add_argument("--rate", type=float, default=50, help="messages per second, both directions together")
    ap.add_argument("--secs", type=float, default=20)
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    host, port = a.server.rsplit(":", 1)
    names = a.users.split(",")
    clients = [await login(host, int(port), a.domain, a.ca, u, a.password) for u in names]
    sent = {}
    lat = []
    done = asyncio.Event()

    async def receive(c):
        rx = re.compile(rb"<body>probe (\d+)</body>")
        while not done.is_set():
            data = await c.r.read(65536)
            now = time.perf_counter_ns()
            if not data:
                return
            c.buf += data
            end = 0
            for m in rx.finditer(c.buf):
                seq = int(m.group(1))
                if seq in sent:
                    lat.append((now - sent.pop(seq)) / 1e6)
                end = m.end()
            # keep what may be the start of a body split across reads
            c.buf = c.buf[end:]
            if len(c.buf) > 65536:
                c.buf = c.buf[c.buf.rfind(b"<"):]

    receivers = [asyncio.create_task(receive(c)) for c in clients]
    n = int(a.rate * a.secs)
    start = time.perf_counter()
    for seq in range(n):
        at = start + seq / a.rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        src, dst = clients[seq % 2], names[(seq + 1) % 2]
        sent[seq] = time.perf_counter_ns()
        await src.send(f"<message to='{dst}@{a.domain}' type='chat'><body>probe {seq}</body></message>")
    await asyncio.sleep(1.0)
    done.set()
    for t in receivers:
        t.cancel()
    lat.sort()
    pick = lambda q: round(lat[min(len(lat) - 1, int(q * (len(lat) - 1) + 0.5))], 3) if lat else None
    print(json.dumps({"scenario": "probe", "label": a.label, "sent": n, "delivered": len(lat),
                      "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": pick(1.0)}), flush=True)


asyncio.run(main())
