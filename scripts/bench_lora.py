"""LoRa packet-forwarder benchmark: this script plays a gateway sending PUSH_DATA to cairn's
endpoint. Frames are built by tests/peers/lorawan_frames.py.

- Uplinks: 100 ABP end devices send Cayenne LPP, 8 packets per PUSH_DATA, each PUSH_ACK awaited.
  Prints frames per second from first datagram to last committed reading, cairn's CPU time per
  frame and its peak RSS.
- Joins: 100 OTAA devices join at once, each request in its own PUSH_DATA; the gateway answers
  each PULL_RESP with TX_ACK. Prints joins per second and the time from request to accept.
- ACKs: 100 confirmed uplinks, one every 50 ms. Prints the time from PUSH_DATA to the PULL_RESP
  that answers it, the lead it leaves before RX1 opens (1 s after the uplink), and whether every
  `txpk.tmst` is exactly the uplink's `tmst` + RECEIVE_DELAY1.
"""
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import CAIRN, ROOT, Broker  # noqa: E402
from bench_modbus import cpu_seconds, next_seq, peak_rss_mib  # noqa: E402

PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
FRAMES = os.path.join(ROOT, "tests", "peers", "lorawan_frames.py")
NWK = "44024241ed4ce9a68c6a8bc055233fd3"
APP = "ec925802ae430ca77fd3dd73cb2cc588"
DEVICES = int(os.environ.get("DEVICES", 100))
PER_DEVICE = int(os.environ.get("PER_DEVICE", 50))


GATEWAY = bytes.fromhex("AA555A0000000001")
APP_KEY = "2B7E151628AED2A6ABF7158809CF4F3C"
JOIN_EUI = "70B3D57ED0000001"


def frames_of(request):
    out = subprocess.run([PYTHON, FRAMES], input=json.dumps({"nwk": NWK, "app": APP, "frames": request}),
                         capture_output=True, text=True, check=True)
    return [bytes.fromhex(f["phy"]) for f in json.loads(out.stdout)["frames"]]


def start(devices, mqtt="", extra=""):
    """cairn with the forwarder `gw` and `devices` (and `mqtt` settings, and `extra` sections),
    and a gateway socket that has pulled: the broker, cairn's process, the socket, the
    endpoint's port, the config."""
    broker = Broker()
    d = tempfile.mkdtemp()
    config = os.path.join(d, "cairn.yaml")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    udp.close()
    with open(config, "w") as f:
        f.write(f"gateway: {{id: bench, data_dir: {d}/data}}\n"
                f"mqtt: {{host: 127.0.0.1, port: {broker.port}{mqtt}}}\nfeed: {{enabled: false}}\n{extra}"
                f"devices:\n  - name: gw\n    type: lora\n    forwarder: {{listen: '127.0.0.1:{port}'}}\n{devices}")
    proc = subprocess.Popen([CAIRN, "run", "--config", config], stderr=subprocess.DEVNULL,
                            env={**os.environ, "RUST_LOG": "warn"})
    gw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gw.settimeout(10)
    deadline = time.time() + 10
    while True:  # PULL_DATA until the endpoint answers: it is bound, and has our address
        gw.sendto(bytes([2, 0, 1, 2]) + GATEWAY, ("127.0.0.1", port))
        try:
            gw.settimeout(0.2)
            if gw.recv(64)[3] == 4:
                break
        except socket.timeout:
            assert time.time() < deadline, "the forwarder endpoint never answered"
    gw.settimeout(10)
    return broker, proc, gw, port, config


def stop(broker, proc):
    proc.terminate()
    proc.wait()
    broker.close()


def push(gw, port, token, phys, tmst):
    """One PUSH_DATA carrying each of `phys`, heard at `tmst`."""
    rxpk = [{"tmst": tmst, "freq": 868.1, "stat": 1, "modu": "LORA", "datr": "SF7BW125", "codr": "4/5",
             "rssi": -60, "lsnr": 8.5, "size": len(phy), "data": base64.b64encode(phy).decode()}
            for phy in phys]
    gw.sendto(bytes([2, token >> 8, token & 0xFF, 0]) + GATEWAY + json.dumps({"rxpk": rxpk}).encode(),
              ("127.0.0.1", port))


def answers(gw, port, expected, sent, delay):
    """PULL_RESPs until `expected` came or 30 s passed, each acknowledged with TX_ACK: the
    latency from its request's `sent` time (by request tmst), and tmst mismatches."""
    latencies, wrong = [], 0
    gw.settimeout(30)
    while len(latencies) < expected:
        try:
            datagram = gw.recv(2048)
        except socket.timeout:
            break
        if datagram[3] != 3:
            continue
        now = time.time()
        gw.sendto(bytes([2, datagram[1], datagram[2], 5]) + GATEWAY + b'{"txpk_ack":{"error":"NONE"}}',
                  ("127.0.0.1", port))
        txpk = json.loads(datagram[4:])["txpk"]
        request = (txpk["tmst"] - delay) & 0xFFFFFFFF
        if request not in sent:
            wrong += 1
            continue
        latencies.append(now - sent.pop(request))
    return latencies, wrong


def percentiles(latencies):
    ms = sorted(x * 1000 for x in latencies)
    if not ms:
        return "none"
    pick = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    return f"p50 {pick(0.5):.0f} ms, p99 {pick(0.99):.0f} ms, max {ms[-1]:.0f} ms"


def joins(n=100):
    devices = "".join(
        f"  - name: j{i}\n    type: lora\n    lorawan: {{via: gw, otaa: {{dev_eui: '70B3D5000000{i:04X}', "
        f"join_eui: '{JOIN_EUI}', app_key: {APP_KEY}}}}}\n" for i in range(n))
    requests = frames_of([{"join_eui": JOIN_EUI, "dev_eui": f"70B3D5000000{i:04X}", "dev_nonce": f"{i + 1:04X}",
                           "app_key": APP_KEY} for i in range(n)])
    broker, proc, gw, port, _ = start(devices)
    try:
        time.sleep(1)  # the end devices listen for their joins
        sent, t0 = {}, time.time()
        for i, phy in enumerate(requests):
            tmst = (i + 1) * 10_000_000
            sent[tmst] = time.time()
            push(gw, port, i & 0xFFFF, [phy], tmst)
        latencies, wrong = answers(gw, port, n, sent, 5_000_000)
        t1 = time.time()
        print(f"lora joins: {len(latencies)} of {n} OTAA devices joined at once, {len(latencies) / (t1 - t0):.0f} joins/s; "
              f"request to accept {percentiles(latencies)} (RX1 opens at 5 s); {wrong} accepts at a wrong tmst")
    finally:
        stop(broker, proc)


def acks(n=100):
    devices = "".join(
        f"  - name: c{i}\n    type: lora\n    lorawan: {{via: gw, dev_addr: '2601{i:04X}', nwk_s_key: {NWK}, app_s_key: {APP}}}\n"
        for i in range(n))
    uplinks = frames_of([{"dev_addr": f"2601{i:04X}", "fcnt": 1, "fport": 2, "payload": "00", "confirmed": True}
                         for i in range(n)])
    broker, proc, gw, port, _ = start(devices)
    try:
        time.sleep(1)
        sent, latencies, wrong = {}, [], 0
        for i, phy in enumerate(uplinks):
            tmst = (i + 1) * 10_000_000
            sent[tmst] = time.time()
            push(gw, port, i & 0xFFFF, [phy], tmst)
            got, bad = answers(gw, port, 1, sent, 1_000_000)
            latencies += got
            wrong += bad
            time.sleep(0.05)
        lead = [1 - x for x in latencies]
        print(f"lora ACKs: {len(latencies)} of {n} confirmed uplinks answered; uplink to PULL_RESP {percentiles(latencies)} "
              f"(200 ms of it waits for copies from other gateways); lead before RX1 at least {min(lead) * 1000:.0f} ms; "
              f"{wrong} at a wrong tmst (each txpk.tmst must be rxpk.tmst + 1,000,000 µs exactly)")
    finally:
        stop(broker, proc)


def main():
    uplink_throughput()
    joins()
    acks()


def uplink_throughput():
    frames = frames_of([
        {"dev_addr": f"2601{d:04X}", "fcnt": n + 1, "fport": 2,
         "lpp": [[103, 1, [20 + n / 10]], [104, 2, [55]], [136, 3, [42.3519, -87.9094, 10]]]}
        for n in range(PER_DEVICE) for d in range(DEVICES)])
    nodes = "".join(
        f"  - name: n{i}\n    type: lora\n    lorawan: {{via: gw, dev_addr: '2601{i:04X}', nwk_s_key: {NWK}, app_s_key: {APP}}}\n"
        f"    payload: {{codec: cayenne_lpp}}\n" for i in range(DEVICES))
    # The last rows would otherwise wait a whole commit interval: this measures the path, not
    # the group commit's linger.
    broker, proc, gw, port, config = start(nodes, ", max_inflight: 1000", "buffer: {commit_interval: 100ms}\n")
    try:
        time.sleep(2)  # the end devices listen, as before
        cpu0, t0 = cpu_seconds(proc.pid), time.time()
        for i in range(0, len(frames), 8):
            push(gw, port, (i // 8) & 0xFFFF, frames[i:i + 8], 1)
            gw.recv(16)
        # Done when every frame is in the outbox, or nothing more arrives for a second (an end
        # device more than 64 frames behind drops them as `device_busy`).
        last, t1 = next_seq(config), time.time()
        while last <= len(frames) and time.time() - t1 < 1:
            time.sleep(0.05)
            seq = next_seq(config)
            if seq != last:
                last, t1 = seq, time.time()
        cpu1 = cpu_seconds(proc.pid)
        n, stored = len(frames), last - 1
        print(f"lora forwarder: {n} LoRaWAN frames from {DEVICES} ABP devices (MIC, decrypt, Cayenne LPP), "
              f"8 per datagram: {stored} stored, {stored / (t1 - t0):.0f} frames/s to the outbox, "
              f"cairn CPU {(cpu1 - cpu0) / stored * 1e6:.0f} µs per frame, peak RSS {peak_rss_mib(proc.pid):.1f} MiB")
    finally:
        stop(broker, proc)


if __name__ == "__main__":
    main()
