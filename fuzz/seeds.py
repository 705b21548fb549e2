#!/usr/bin/env python3
"""Writes the seed corpora (fuzz/corpus/<target>/seed-*) from the test fixtures and the wire
format's examples. Run once with the test venv (cbor2, zstandard): .venv/bin/python fuzz/seeds.py.
The fuzzers add what they find to the corpora; seeds only give them a start past the checks."""
import base64, json, pathlib, struct, zlib

import cbor2
import zstandard

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def write(target, seeds):
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds):
        (folder / f"seed-{i:02}").write_bytes(seed if isinstance(seed, bytes) else seed.encode())


def crc16_modbus(data):
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return struct.pack("<H", crc)


nmea = (ROOT / "tests/fixtures/nmea/sample.nmea").read_text().splitlines()
write("nmea", [line for line in nmea if line.strip()][:12])
write("uart_lines", [
    b"\x00\x05" + b'{"t":21.5,"h":40}\r\nt=21.5 h=40\n1,2,3\n21.5;x\n',
    b"\x07\x00" + b"temperature:21.5,humidity:40,ok:true\n" * 3,
])

pms = bytes([0x42, 0x4D, 0x00, 0x1C]) + bytes(range(1, 27))
pms += struct.pack(">H", sum(pms) & 0xFFFF)
# Header: sync 42 4D, u16 length at 2 (big), adjust 4, max 8+24, sum16 at the end.
write("uart_frames", [
    bytes([0x04, 0, 24, 2, 4, 2, 0, 0]) + pms * 2 + b"\x00garbage" + pms,
    bytes([0x01, 0xAA, 8, 8, 0, 3, 0, 1]) + bytes([0xAA, 1, 2, 3, 4, 5, 6, 7 ^ 1 ^ 2 ^ 3 ^ 4 ^ 5 ^ 6]),
])

rtu = bytes([1, 3, 4, 0, 10, 0, 11])
tcp_pdu = bytes([3, 4, 0, 10, 0, 11])
points = bytes([0, 0x00, 0x00, 1, 0x00, 0x20])
write("modbus_response", [
    bytes([0, len(points)]) + points + rtu + crc16_modbus(rtu),
    bytes([0, len(points)]) + points + bytes([1, 0x83, 2]) + crc16_modbus(bytes([1, 0x83, 2])),
    bytes([1, len(points)]) + points + struct.pack(">HHHB", 0, 0, len(tcp_pdu) + 1, 1) + tcp_pdu,
    bytes([1, len(points)]) + points + struct.pack(">HHHB", 1, 0, len(tcp_pdu) + 1, 1) + tcp_pdu,
    bytes([4, 3, 0, 0, 0]) + bytes([1, 1, 1, 1]) + crc16_modbus(bytes([1, 1, 1, 1])),
])

vectors = json.loads((ROOT / "tests/fixtures/lora/lorawan_vectors.json").read_text())
phys = [bytes.fromhex(f["phy"]) for f in vectors["frames"]]
header = lambda kind: bytes([2, 0x12, 0x34, kind]) + bytes.fromhex("AA555A0000000101")
rxpk = json.loads((ROOT / "tests/fixtures/lora/protocol_txt_rxpk.json").read_text())
rxpk["rxpk"][0]["data"] = base64.b64encode(phys[0]).decode()
rxpk["rxpk"][0]["size"] = len(phys[0])
stat = (ROOT / "tests/fixtures/lora/protocol_txt_stat.json").read_bytes()
write("gwmp", [
    header(0) + json.dumps(rxpk).encode(),
    header(0) + stat,
    header(2),
    header(5) + b'{"txpk_ack":{"error":"NONE"}}',
])
# Raw frames (a length byte below 0x80), and frames the target signs itself (top bit set:
# counter, flags, FPort, payload).
signed = lambda fcnt, payload: (bytes([0x80 | (6 + len(payload))]) + struct.pack("<I", fcnt)
                                + bytes([4, 1]) + payload)
write("lorawan", [
    bytes([0]) + b"".join(bytes([len(p)]) + p for p in phys if len(p) < 0x80),
    bytes([2]) + b"".join(bytes([len(p)]) + p for p in reversed(phys) if len(p) < 0x80),
    bytes([0]) + signed(1, bytes.fromhex("03670110")) + signed(2, b"") + signed(70000, b"x" * 20),
])
write("cayenne", [
    bytes.fromhex("03670110056700FF"),
    bytes.fromhex("0167FFD7067104D2FB2E0000"),
    bytes.fromhex("018806765ff2960a0003e8"),
])

write("config", [p.read_text() for p in sorted((ROOT / "config").glob("*.yaml"))])
write("command_payload", ["21.5", "true", '"auto"', '{"value": 3, "id": "x-1"}', "-1e308", "18446744073709551615"])
write("ws_client", [
    '{"subscribe":{"devices":["mast*"],"values":["t?mp*"]}}',
    '{"subscribe":{}}',
])
write("ws_offer", [
    "permessage-deflate; client_max_window_bits",
    "permessage-deflate",
    'permessage-deflate; server_max_window_bits=10; client_max_window_bits="12"; '
    "server_no_context_takeover; client_no_context_takeover",
    "x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=8, permessage-deflate",
])

body = {"b": [{"d": "mast", "s": [41, 1], "t": [1764064800000, 1000], "u": [1],
               "c": [{"n": "temperature", "k": "d", "e": 1, "v": [215, 1]},
                     {"n": "pump", "k": "b", "v": [True, False]},
                     {"n": "mode", "k": "s", "v": ["auto", None]},
                     {"n": "count", "k": "i", "v": [None, -7]},
                     {"n": "x", "k": "f", "v": [1.5, float("nan")]}]},
              {"d": "b2", "s": [40], "t": [1764064799000], "c": []}],
        "h": True}
cbor = cbor2.dumps(body)
write("batch_decode", [
    b"\x10" + cbor,
    b"\x11" + zstandard.ZstdCompressor().compress(cbor),
    b"\x12" + zlib.compress(cbor),
    b'{"seq":1,"ts":"2026-11-25T10:00:00.123Z","values":{"t":21.5},"unsynced":true}',
])
