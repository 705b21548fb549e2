"""Cairn benchmarks: store throughput, end-to-end QoS 1 throughput, latency, peak RSS.

Each scenario runs the release binary with simulated devices against a fresh mosquitto on an
ephemeral port, and reads progress from `cairn stats` and an independent mosquitto_sub.
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# CAIRN_BIN measures another build (a branch, an older release) with the same scenarios.
CAIRN = os.environ.get("CAIRN_BIN", os.path.join(ROOT, "target", "release", "cairn"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port):
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"port {port} never opened")


class Broker:
    def __init__(self):
        self.dir = tempfile.mkdtemp()
        os.chmod(self.dir, 0o777)
        self.port = free_port()
        conf = os.path.join(self.dir, "m.conf")
        with open(conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
                    "max_inflight_messages 1000\n")
        self.proc = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def close(self):
        self.proc.terminate()
        self.proc.wait()


class Subscriber:
    """mosquitto_sub at QoS 1; records (arrival time, payload) of data messages."""

    def __init__(self, port, keep=False):
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", "cairn/bench/#", "-F", "%U %p"],
            stdout=subprocess.PIPE, text=True, errors="replace", bufsize=1)
        self.count = 0
        self.keep = keep
        self.samples = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        time.sleep(0.5)

    def _read(self):
        for line in self.proc.stdout:
            stamp, _, payload = line.partition(" ")
            if not payload.startswith('{"seq"'):
                continue
            self.count += 1
            if self.keep:
                self.samples.append((float(stamp), payload))

    def close(self):
        self.proc.terminate()
        self.proc.wait()


class Cairn:
    def __init__(self, port, rate, limit, extra="", mqtt="", feed=""):
        self.dir = tempfile.mkdtemp()
        self.config = os.path.join(self.dir, "cairn.yaml")
        self.feed_port = free_port()
        with open(self.config, "w") as f:
            f.write(f"""gateway: {{id: bench, data_dir: {self.dir}/data}}
mqtt: {{host: 127.0.0.1, port: {port}, reconnect_min: 100ms, reconnect_max: 1s, max_inflight: 1000{mqtt}}}
buffer: {{max_bytes: 2GiB{extra}}}
feed: {{listen: '127.0.0.1:{self.feed_port}'{feed}}}
devices:
  - name: sim
    type: sim
    rate: {rate}
    limit: {limit}
    values:
      - {{name: temperature, unit: °C, sine: {{mean: 20, amplitude: 5, period: 1m, noise: 0.1}}}}
      - {{name: pulses, counter: {{}}}}
""")
        self.proc = subprocess.Popen([CAIRN, "run", "--config", self.config], stderr=subprocess.DEVNULL,
                                     env={**os.environ, "RUST_LOG": "warn"})
        self.peak_rss_kb = 0

    def stats(self):
        out = subprocess.run([CAIRN, "stats", "--config", self.config], capture_output=True, text=True)
        if out.returncode != 0:
            return None
        stats = {}
        for line in out.stdout.splitlines():
            key, _, value = line.partition(": ")
            try:
                stats[key] = int(value.split()[0])
            except (ValueError, IndexError):
                pass
        return stats

    def sample_rss(self):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.peak_rss_kb = max(self.peak_rss_kb, int(line.split()[1]))
        except OSError:
            pass

    def wait(self, condition, timeout=600):
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.sample_rss()
            stats = self.stats()
            if stats and condition(stats):
                return time.time()
            time.sleep(0.02)
        raise RuntimeError("timed out")

    def close(self):
        self.sample_rss()
        self.proc.terminate()
        self.proc.wait()


def store_throughput(n):
    cairn = Cairn(free_port(), 1_000_000, n)  # nobody listens: the uplink only retries
    start = cairn.wait(lambda s: s.get("next seq", 1) > 1)
    end = cairn.wait(lambda s: s["next seq"] > n)
    cairn.close()
    return n / (end - start), cairn.peak_rss_kb


def end_to_end(n, mqtt=""):
    broker = Broker()
    sub = Subscriber(broker.port)
    cairn = Cairn(broker.port, 1_000_000, n, mqtt=mqtt)
    start = time.time()
    cairn.wait(lambda s: s.get("next seq", 1) > n and s["backlog"] == 0)
    acked = time.time()
    while sub.count < n and time.time() < acked + 60:
        time.sleep(0.01)
    received = time.time()
    cairn.close()
    sub.close()
    broker.close()
    return n / (acked - start), sub.count / (received - start), cairn.peak_rss_kb


def latency(rate, seconds):
    broker = Broker()
    sub = Subscriber(broker.port, keep=True)
    cairn = Cairn(broker.port, rate, rate * seconds, extra=", commit_interval: 10ms")
    cairn.wait(lambda s: s.get("next seq", 1) > rate * seconds and s["backlog"] == 0)
    time.sleep(0.5)
    cairn.close()
    sub.close()
    broker.close()
    lat = []
    for arrived, payload in sub.samples:
        ts = json.loads(payload)["ts"]
        sent = time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone + float("0" + ts[19:-1])
        lat.append((arrived - sent) * 1000)
    lat.sort()
    return len(lat), statistics.median(lat), lat[int(len(lat) * 0.99) - 1], cairn.peak_rss_kb


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500_000
    print(f"cairn bench on {os.cpu_count()} cores; {n} readings per throughput run; synchronous=full")
    rate, rss1 = store_throughput(n)
    print(f"store:      {rate:10,.0f} readings/s committed (no broker), peak RSS {rss1 / 1024:.1f} MiB")
    acked, received, rss2 = end_to_end(n // 2)
    print(f"end to end: {acked:10,.0f} readings/s acknowledged (QoS 1, deleted on PUBACK), "
          f"{received:,.0f}/s at the subscriber, peak RSS {rss2 / 1024:.1f} MiB")
    batch = ", encoding: cbor, compression: zstd, batch: {max_readings: 1000, linger: 50ms}"
    acked, _, rss4 = end_to_end(n // 2, mqtt=batch)
    print(f"end to end: {acked:10,.0f} readings/s acknowledged in cbor+zstd batches of 1,000 "
          f"(deleted on PUBACK), peak RSS {rss4 / 1024:.1f} MiB")
    count, p50, p99, rss3 = latency(1000, 10)
    print(f"latency:    p50 {p50:.1f} ms, p99 {p99:.1f} ms from reading to subscriber at 1,000 readings/s "
          f"({count} samples; ts has ms resolution), peak RSS {rss3 / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
