"""An independent WebSocket client (the `websockets` library) for Cairn's /ws feed.

    ws_client.py compare URL COUNT
        Three clients at once: JSON with permessage-deflate (offered as browsers offer it),
        JSON without, and CBOR (`format=cbor`, decoded with cbor2) with deflate. Each reads
        its first message and then COUNT readings. Prints one JSON line: per client the
        first message's type, the feed_seq and seq lists and the extensions the server
        accepted; and whether the messages all three received are the same.
    ws_client.py many URL CLIENTS COUNT [--hold]
        CLIENTS clients with deflate, each reading COUNT messages. With --hold, once all
        have, prints {"held": CLIENTS} and keeps them connected until a line arrives on
        stdin. Then prints the clients whose feed_seq had a gap and the extensions accepted."""
import asyncio
import json
import sys

import cbor2
from websockets.asyncio.client import connect


async def read(url, count, compression, binary=False):
    decode = cbor2.loads if binary else json.loads
    async with connect(url, compression=compression, open_timeout=30, max_size=2**24) as ws:
        first = await asyncio.wait_for(ws.recv(), 60)
        if binary != isinstance(first, bytes):
            raise SystemExit(f"{url}: frame type {type(first).__name__}, binary={binary}")
        first = decode(first)
        messages = []
        while sum(m["type"] == "reading" for m in messages) < count:
            messages.append(decode(await asyncio.wait_for(ws.recv(), 60)))
        return {"first": first["type"], "messages": messages,
                "extensions": ws.response.headers.get("Sec-WebSocket-Extensions")}


def summary(client):
    messages = client.pop("messages")
    client["feed_seqs"] = [m["feed_seq"] for m in messages]
    client["seqs"] = [m["seq"] for m in messages if m["type"] == "reading"]
    return client


async def compare(url, count):
    sep = "&" if "?" in url else "?"
    clients = await asyncio.gather(
        read(url, count, "deflate"),
        read(url, count, None),
        read(url + sep + "format=cbor", count, "deflate", binary=True),
    )
    by_seq = [{m["feed_seq"]: m for m in c["messages"]} for c in clients]
    common = set(by_seq[0]) & set(by_seq[1]) & set(by_seq[2])
    same = all(by_seq[0][s] == by_seq[1][s] == by_seq[2][s] for s in common)
    names = ["deflate", "plain", "cbor"]
    print(json.dumps({"common": len(common), "same": same,
                      **{n: summary(c) for n, c in zip(names, clients)}}))


async def many(url, clients, count, hold):
    everyone = asyncio.Event()
    release = asyncio.Event()
    done = []

    async def one(i):
        async with connect(url, compression="deflate", open_timeout=60) as ws:
            json.loads(await asyncio.wait_for(ws.recv(), 120))
            seqs = []
            while len(seqs) < count:
                seqs.append(json.loads(await asyncio.wait_for(ws.recv(), 120))["feed_seq"])
            done.append(i)
            if len(done) == clients:
                everyone.set()
            if hold:
                await release.wait()
            gap = any(b != a + 1 for a, b in zip(seqs, seqs[1:]))
            return i if gap else None, ws.response.headers.get("Sec-WebSocket-Extensions")

    tasks = [asyncio.create_task(one(i)) for i in range(clients)]
    if hold:
        # A client that fails ends the wait too; gather then raises its error.
        waiting = asyncio.create_task(everyone.wait())
        await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if everyone.is_set():
            print(json.dumps({"held": clients}), flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        release.set()
    results = await asyncio.gather(*tasks)
    print(json.dumps({"gaps": [i for i, _ in results if i is not None],
                      "extensions": sorted({e or "" for _, e in results})}))


if __name__ == "__main__":
    mode, url = sys.argv[1], sys.argv[2]
    if mode == "compare":
        asyncio.run(compare(url, int(sys.argv[3])))
    else:
        asyncio.run(many(url, int(sys.argv[3]), int(sys.argv[4]), "--hold" in sys.argv))
