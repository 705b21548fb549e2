"""Cairn feed benchmark: latency from reading to WebSocket client, and bytes per reading on the
wire, with 1 and 100 clients (the `websockets` library from the test venv).

The clients are Python: with 100 of them the client side, not Cairn, bounds the rate, so the
100-client run uses 100 readings/s (10,000 messages/s in all).
"""
import asyncio
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Broker, Cairn, free_port  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402


def parse_ts(ts):
    return time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone + float("0" + ts[19:-1])


async def client(url, limit, latencies, sizes):
    async with connect(url, compression=None, max_size=None) as ws:
        while True:
            text = await ws.recv()
            arrived = time.time()
            message = json.loads(text)
            if message["type"] != "reading":
                continue
            latencies.append((arrived - parse_ts(message["ts"])) * 1000)
            # A text frame: 2 header bytes up to 125 bytes of payload, 4 up to 64 KiB.
            sizes.append(len(text.encode()) + (2 if len(text) < 126 else 4))
            if message["values"]["pulses"] >= limit - 1:
                return


async def run(clients, rate, seconds):
    broker = Broker()
    limit = rate * seconds
    cairn = Cairn(broker.port, rate, limit, extra=", commit_interval: 10ms")
    url = f"ws://127.0.0.1:{cairn.feed_port}/ws"
    for _ in range(500):
        try:
            async with connect(url):
                break
        except OSError:
            await asyncio.sleep(0.02)
    latencies, sizes = [], []
    await asyncio.gather(*(client(url, limit, latencies, sizes) for _ in range(clients)))
    cairn.close()
    broker.close()
    latencies.sort()
    return len(latencies), statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1], \
        statistics.mean(sizes), cairn.peak_rss_kb


def main():
    for clients, rate in [(1, 1000), (100, 100)]:
        count, p50, p99, size, rss = asyncio.run(run(clients, rate, 10))
        print(f"feed:       {clients:3} client(s) at {rate:,} readings/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
              f"from reading to WebSocket client ({count} samples), {size:.0f} bytes per reading on the wire "
              f"(no deflate)")


if __name__ == "__main__":
    main()
