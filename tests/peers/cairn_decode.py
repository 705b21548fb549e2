"""An independent decoder of Cairn's reading payloads, written from docs/wire-format.md alone
(it shares no code with Cairn): the stock `cbor2`, `zstandard` and `zlib` libraries do the
decoding, this file only follows the specification.

Reads `topic hex-payload` lines on stdin, as `mosquitto_sub -F '%t %x'` prints them, and
writes one JSON object per reading: {"topic", "device", "seq", "ts", "values", "historical",
"unsynced"}.
A payload that does not decode is reported on stderr and makes the exit status 1.
"""

import datetime
import json
import math
import sys
import zlib

import cbor2
import zstandard

LIMIT = 64 * 1024 * 1024


def rfc3339_millis(ms):
    t = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(
        milliseconds=ms
    )
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def undelta(values):
    out, total = [], 0
    for v in values:
        total += v
        out.append(total)
    return out


def column_values(column, n):
    kind, cells = column["k"], column["v"]
    if len(cells) != n:
        raise ValueError("a column without one cell per reading")
    out, previous = [], 0
    for cell in cells:
        if cell is None:
            out.append(None)
            continue
        if kind in ("i", "d"):
            previous += cell
            out.append(previous if kind == "i" else previous / (10 ** column["e"]))
        elif kind == "f":
            out.append(float(cell))
        elif kind == "b":
            if not isinstance(cell, bool):
                raise ValueError("a bool cell that is not a bool")
            out.append(cell)
        elif kind == "s":
            out.append(str(cell))
        else:
            raise ValueError(f"unknown kind {kind!r}")
    return out


def decode_batch(body):
    batch = cbor2.loads(body)
    historical = batch.get("h", False)
    for block in batch["b"]:
        seqs = undelta(block["s"])
        times = undelta(block["t"])
        n = len(seqs)
        if len(times) != n:
            raise ValueError("t does not have one entry per reading")
        columns = [(c["n"], column_values(c, n)) for c in block["c"]]
        unsynced = set(block.get("u", []))
        if any(i >= n for i in unsynced):
            raise ValueError("u names a reading the block does not have")
        for i in range(n):
            values = {name: cells[i] for name, cells in columns if cells[i] is not None}
            yield block["d"], seqs[i], times[i], values, historical, i in unsynced


def decode(topic, payload):
    first = payload[0]
    if first == 0x7B:
        reading = json.loads(payload)
        device = topic.rsplit("/", 1)[-1]
        yield {
            "topic": topic,
            "device": device,
            "seq": reading["seq"],
            "ts": reading["ts"],
            "values": reading["values"],
            "historical": reading.get("historical", False),
            "unsynced": reading.get("unsynced", False),
        }
        return
    if first >> 4 != 1:
        raise ValueError(f"unknown format byte {first:#04x}")
    rest = payload[1:]
    compression = first & 0x0F
    if compression == 0:
        body = rest
    elif compression == 1:
        body = zstandard.ZstdDecompressor().decompressobj().decompress(rest)
    elif compression == 2:
        body = zlib.decompress(rest, bufsize=65536)
    else:
        raise ValueError(f"unknown compression {compression}")
    if len(body) > LIMIT:
        raise ValueError("too large")
    for device, seq, ts, values, historical, unsynced in decode_batch(body):
        yield {
            "topic": topic,
            "device": device,
            "seq": seq,
            "ts": rfc3339_millis(ts),
            # JSON has no NaN: Cairn's own JSON writes such floats as null.
            "values": {
                k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in values.items()
            },
            "historical": historical,
            "unsynced": unsynced,
        }


def main():
    failed = False
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line:
            continue
        topic, _, hexed = line.partition(" ")
        if topic.endswith(("/status", "/meta", "/set", "/result", "/summary")):
            continue
        try:
            for reading in decode(topic, bytes.fromhex(hexed)):
                print(json.dumps(reading, separators=(",", ":")))
        except Exception as e:  # report and go on: one bad payload must not hide the rest
            print(f"{topic}: {e!r}", file=sys.stderr)
            failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
