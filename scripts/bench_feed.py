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
import re
import statistics
import subprocess
import sys
import tempfile
import time

import cbor2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import CAIRN, ROOT, Broker, Cairn, free_port, wait_port  # noqa: E402
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


class Demo:
    """The demo gateway (config/demo.yaml: 4 devices, 0.8 readings/s) on private ports: the
    mix of readings a site sends."""

    def __init__(self, broker_port, feed, full_precision=False):
        self.dir = tempfile.mkdtemp()
        self.feed_port = free_port()
        with open(os.path.join(ROOT, "config", "demo.yaml")) as f:
            text = f.read()
        if full_precision:
            # Sensor noise to 17 digits, as a device without `decimals` sends it.
            text = re.sub(r"\n *decimals: \d+[^\n]*", "", text)
        text = (text.replace("data_dir: ./data", f"data_dir: {self.dir}/data")
                .replace("port: 1883", f"port: {broker_port}")
                .replace("listen: 0.0.0.0:8080", f"listen: 127.0.0.1:{self.feed_port}\n  " + feed))
        config = os.path.join(self.dir, "cairn.yaml")
        with open(config, "w") as f:
            f.write(text)
        self.proc = subprocess.Popen([CAIRN, "run", "--config", config], stderr=subprocess.DEVNULL,
                                     env={**os.environ, "RUST_LOG": "warn"})

    def close(self):
        self.proc.terminate()
        self.proc.wait()


async def reader(url, compression, until, counts, connected):
    async with connect(url, compression=compression, max_size=None) as ws:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
        connected.append(extensions)
        while time.monotonic() < until:
            try:
                frame = await asyncio.wait_for(ws.recv(), max(0.01, until - time.monotonic()))
            except asyncio.TimeoutError:
                break
            message = cbor2.loads(frame) if isinstance(frame, bytes) else json.loads(frame)
            if message["type"] == "reading":
                counts.append(1)
        return extensions


async def wire(gateway, clients, seconds, compression, fmt):
    """`clients` clients of `gateway` through relays for `seconds`: bytes per reading, Cairn's
    CPU per 1,000 messages it sent, and its RSS with all of them connected."""
    for _ in range(500):
        try:
            async with connect(f"ws://127.0.0.1:{gateway.feed_port}/ws"):
                break
        except OSError:
            await asyncio.sleep(0.02)
    relays = [Relay(gateway.feed_port) for _ in range(clients)]
    ports = [await r.start() for r in relays]
    query = "?format=cbor" if fmt == "cbor" else ""
    counts, connected = [], []
    cpu0 = cpu_seconds(gateway.proc.pid)
    until = time.monotonic() + seconds
    tasks = [asyncio.create_task(reader(f"ws://127.0.0.1:{p}/ws{query}", compression, until, counts,
                                        connected)) for p in ports]
    while len(connected) < clients:
        await asyncio.sleep(0.05)
    await asyncio.sleep(seconds / 2)
    rss = rss_kib(gateway.proc.pid)
    extensions = await asyncio.gather(*tasks)
    cpu = cpu_seconds(gateway.proc.pid) - cpu0
    gateway.close()
    readings = max(len(counts), 1)
    return {"per_reading": sum(r.down for r in relays) / readings, "readings": readings / clients,
            "cpu_per_1000": cpu / readings * 1000, "rss": rss, "deflate": bool(extensions[0])}


def http(port, path, headers=""):
    """GET `path` as a browser asks for it: the whole response's bytes and its ETag."""
    import socket
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: gateway\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n"
                     f"{headers}Connection: close\r\n\r\n".encode())
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head = response.split(b"\r\n\r\n", 1)[0].decode()
    etag = next((line.split(":", 1)[1].strip() for line in head.split("\r\n")
                 if line.lower().startswith("etag:")), None)
    return len(response), etag


def first_load():
    """The bytes of the dashboard's first load (its five files, the status and the devices)
    and of a reload (the files revalidated), headers included."""
    broker = Broker()
    demo = Demo(broker.port, "deflate_clients: 4")
    wait_port(demo.feed_port)
    files = ["/", "/app.js", "/style.css", "/uplot.js", "/uplot.css"]
    first = [http(demo.feed_port, path) for path in files]
    api = sum(http(demo.feed_port, path)[0] for path in ["/api/status", "/api/devices"])
    reload = sum(http(demo.feed_port, path, f"If-None-Match: {etag}\r\n")[0]
                 for path, (_, etag) in zip(files, first))
    demo.close()
    broker.close()
    print(f"dashboard:  first load {sum(n for n, _ in first):,} B of files and {api:,} B of /api/status "
          f"and /api/devices; a reload {reload:,} B (five 304s)")


def row(label, r):
    print(f"| {label} | {'yes' if r['deflate'] else 'no'} | {r['readings']:,.0f} | {r['per_reading']:.1f} B | "
          f"{r['cpu_per_1000'] * 1000:.1f} ms | {r['rss'] / 1024:.1f} MiB |", flush=True)


def main():
    for clients, rate in [(1, 1000), (100, 100)]:
        count, p50, p99 = asyncio.run(run(clients, rate, 10))
        print(f"feed:       {clients:3} client(s) at {rate:,} readings/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
              f"from reading to WebSocket client ({count} samples)")
    first_load()
    print("| clients, frames | deflate | readings each | bytes per reading | Cairn CPU per 1,000 messages sent | RSS |")
    print("|---|---|---|---|---|---|")
    # A site's mix (the demo, 0.8 readings/s), one client: what a viewer's link carries.
    for full in [False, True]:
        for fmt in ["json", "cbor"]:
            for compression in [None, "deflate"]:
                broker = Broker()
                demo = Demo(broker.port, "deflate_clients: 4", full)
                label = f"demo{' at full precision' if full else ''}, 1 client, {fmt}"
                row(label, asyncio.run(wire(demo, 1, 150, compression, fmt)))
                broker.close()
    # 100 clients at 100 readings/s (10,000 messages/s): what compressing costs Cairn.
    for compression in [None, "deflate"]:
        broker = Broker()
        cairn = Cairn(broker.port, 100, 10**9, extra=", commit_interval: 10ms",
                      feed=", deflate_clients: 100, max_per_client: 108")
        row("100 readings/s, 100 clients, json", asyncio.run(wire(cairn, 100, 30, compression, "json")))
        broker.close()


if __name__ == "__main__":
    main()
