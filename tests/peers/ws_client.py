"""An independent WebSocket client (the `websockets` library) for Cairn's /ws feed.

Usage: ws_client.py URL COUNT. Connects (offering permessage-deflate, as browsers do), reads
the first message and then COUNT readings, and prints one JSON line: the first message's type,
the readings' feed_seq and seq lists, and the extensions the server accepted."""
import asyncio
import json
import sys

from websockets.asyncio.client import connect


async def main(url, count):
    async with connect(url, compression="deflate", open_timeout=30) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 60))
        feed_seqs, seqs = [], []
        while len(seqs) < count:
            message = json.loads(await asyncio.wait_for(ws.recv(), 60))
            feed_seqs.append(message["feed_seq"])
            if message["type"] == "reading":
                seqs.append(message["seq"])
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
        print(json.dumps({"first": first["type"], "feed_seqs": feed_seqs, "seqs": seqs,
                          "extensions": extensions}))


asyncio.run(main(sys.argv[1], int(sys.argv[2])))
