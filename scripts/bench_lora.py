"""LoRa packet-forwarder benchmark: this script plays a gateway sending PUSH_DATA (8 packets
each, waiting for each PUSH_ACK) to cairn's endpoint; 100 ABP end devices send Cayenne LPP.
Prints frames per second from first datagram to last committed reading, cairn's CPU time per
frame and its peak RSS. Frames are built by tests/peers/lorawan_frames.py.
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


def build():
    request = {"nwk": NWK, "app": APP, "frames": [
        {"dev_addr": f"2601{d:04X}", "fcnt": n + 1, "fport": 2,
         "lpp": [[103, 1, [20 + n / 10]], [104, 2, [55]], [136, 3, [42.3519, -87.9094, 10]]]}
        for n in range(PER_DEVICE) for d in range(DEVICES)]}
    out = subprocess.run([PYTHON, FRAMES], input=json.dumps(request), capture_output=True, text=True, check=True)
    return [bytes.fromhex(f["phy"]) for f in json.loads(out.stdout)["frames"]]


def main():
    frames = build()
    broker = Broker()
    d = tempfile.mkdtemp()
    config = os.path.join(d, "cairn.yaml")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    udp.close()
    nodes = "".join(
        f"  - name: n{i}\n    type: lora\n    lorawan: {{via: gw, dev_addr: '2601{i:04X}', nwk_s_key: {NWK}, app_s_key: {APP}}}\n"
        f"    payload: {{codec: cayenne_lpp}}\n" for i in range(DEVICES))
    with open(config, "w") as f:
        f.write(f"gateway: {{id: bench, data_dir: {d}/data}}\n"
                f"mqtt: {{host: 127.0.0.1, port: {broker.port}, max_inflight: 1000}}\n"
                f"feed: {{enabled: false}}\n"
                f"devices:\n  - name: gw\n    type: lora\n    forwarder: {{listen: '127.0.0.1:{port}'}}\n{nodes}")
    proc = subprocess.Popen([CAIRN, "run", "--config", config], stderr=subprocess.DEVNULL,
                            env={**os.environ, "RUST_LOG": "warn"})

    try:
        gw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        gw.settimeout(5)
        time.sleep(2)  # bind and settle
        cpu0, t0 = cpu_seconds(proc.pid), time.time()
        for i in range(0, len(frames), 8):
            rxpk = [{"tmst": 1, "freq": 868.1, "stat": 1, "modu": "LORA", "datr": "SF7BW125",
                     "codr": "4/5", "rssi": -60, "lsnr": 8.5, "size": len(p),
                     "data": base64.b64encode(p).decode()} for p in frames[i:i + 8]]
            token = (i // 8) & 0xFFFF
            gw.sendto(bytes([2, token >> 8, token & 0xFF, 0]) + bytes.fromhex("AA555A0000000001")
                      + json.dumps({"rxpk": rxpk}).encode(), ("127.0.0.1", port))
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
        proc.terminate()
        proc.wait()
        broker.close()


if __name__ == "__main__":
    main()
