"""Cairn feed benchmark: latency from reading to WebSocket client with 1 and 100 clients, and
what permessage-deflate and CBOR frames save (the `websockets` library from the test venv).

The clients are Python: with 100 of them the client side, not Cairn, bounds the rate, so the
100-client run uses 100 readings/s (10,000 messages/s in all).

Wire bytes are counted at a TCP relay between each client and Cairn (everything Cairn sends
after the handshake: frame headers, the snapshot, pings), not computed. CPU is Cairn's utime +
stime over the run; RSS its VmRSS with all clients connected.
"""
import asyncio
import json
import os
import statistics
import sys
import time

import cbor2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Broker, Cairn, free_port  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402


def parse_ts(ts):
    return time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone + float("0" + ts[19:-1])


async def client(url, limit, latencies):
    async with connect(url, compression=None, max_size=None) as ws:
        while True:
            text = await ws.recv()
            arrived = time.time()
            message = json.loads(text)
            if message["type"] != "reading":
                continue
            latencies.append((arrived - parse_ts(message["ts"])) * 1000)
            if message["values"]["pulses"] >= limit - 1:
                return


async def run(clients, rate, seconds):
    broker = Broker()
    limit = rate * seconds
    cairn = Cairn(broker.port, rate, limit, extra=", commit_interval: 10ms",
                  feed=f", max_per_client: {clients + 8}")
    url = f"ws://127.0.0.1:{cairn.feed_port}/ws"
    for _ in range(500):
        try:
            async with connect(url):
                break
        except OSError:
            await asyncio.sleep(0.02)
    latencies = []
    await asyncio.gather(*(client(url, limit, latencies) for _ in range(clients)))
    cairn.close()
    broker.close()
    latencies.sort()
    return len(latencies), statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]


class Relay:
    """A TCP relay to Cairn's feed that counts the bytes Cairn sends through it."""

    def __init__(self, port):
        self.port, self.down = port, 0

    async def start(self):
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def serve(self, client_r, client_w):
        cairn_r, cairn_w = await asyncio.open_connection("127.0.0.1", self.port)

        async def pipe(r, w, count):
            while data := await r.read(65536):
                if count:
                    self.down += len(data)
                w.write(data)
                await w.drain()
            w.close()

        await asyncio.gather(pipe(client_r, cairn_w, False), pipe(cairn_r, client_w, True),
                             return_exceptions=True)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


async def reader(url, compression, limit, counts, connected):
    async with connect(url, compression=compression, max_size=None) as ws:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
        connected.append(extensions)
        while True:
            frame = await ws.recv()
            message = cbor2.loads(frame) if isinstance(frame, bytes) else json.loads(frame)
            if message["type"] != "reading":
                continue
            counts.append(1)
            if message["values"]["pulses"] >= limit - 1:
                return extensions


async def wire(clients, rate, seconds, compression, fmt):
    """`clients` clients through relays: bytes per reading per client, CPU per 1,000 messages
    per client, and RSS with all connected."""
    broker = Broker()
    limit = rate * seconds
    # The device starts once the clients are in: the readings' `pulses` run from 0.
    cairn = Cairn(broker.port, rate, limit, extra=", commit_interval: 10ms",
                  feed=f", deflate_clients: {clients}, max_per_client: {clients + 8}")
    for _ in range(500):
        try:
            async with connect(f"ws://127.0.0.1:{cairn.feed_port}/ws"):
                break
        except OSError:
            await asyncio.sleep(0.02)
    relays = [Relay(cairn.feed_port) for _ in range(clients)]
    ports = [await r.start() for r in relays]
    query = "?format=cbor" if fmt == "cbor" else ""
    counts, connected = [], []
    cpu0 = cpu_seconds(cairn.proc.pid)
    tasks = [asyncio.create_task(reader(f"ws://127.0.0.1:{p}/ws{query}", compression, limit, counts,
                                        connected)) for p in ports]
    while len(connected) < clients:
        await asyncio.sleep(0.05)
    await asyncio.sleep(seconds / 2)
    rss = rss_kib(cairn.proc.pid)
    extensions = await asyncio.gather(*tasks)
    cpu = cpu_seconds(cairn.proc.pid) - cpu0
    cairn.close()
    broker.close()
    readings = len(counts)
    return {"per_reading": sum(r.down for r in relays) / readings, "readings": readings / clients,
            "cpu_per_1000": cpu / readings * 1000, "rss": rss, "deflate": bool(extensions[0])}


def main():
    for clients, rate in [(1, 1000), (100, 100)]:
        count, p50, p99 = asyncio.run(run(clients, rate, 10))
        print(f"feed:       {clients:3} client(s) at {rate:,} readings/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
              f"from reading to WebSocket client ({count} samples)")
    print("| clients | frames | deflate | readings each | bytes per reading | CPU per 1,000 messages per client | RSS |")
    print("|---|---|---|---|---|---|---|")
    for clients, rate, seconds in [(1, 10, 60), (100, 10, 30)]:
        for fmt in ["json", "cbor"]:
            for compression in [None, "deflate"]:
                r = asyncio.run(wire(clients, rate, seconds, compression, fmt))
                print(f"| {clients} | {fmt} | {'yes' if r['deflate'] else 'no'} | {r['readings']:,.0f} | "
                      f"{r['per_reading']:.1f} B | {r['cpu_per_1000'] * 1000:.1f} ms | {r['rss'] / 1024:.1f} MiB |",
                      flush=True)


if __name__ == "__main__":
    main()
