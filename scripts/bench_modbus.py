"""Modbus TCP polling benchmark: cairn against a pymodbus server (tests/peers/modbus_server.py).

1. 100 devices x 20 holding registers polled every second for 30 s: cairn's CPU % and peak RSS.
2. One device polled as fast as it answers: requests per second (bounded by pymodbus).
3. 50 units behind one endpoint (a TCP-to-RTU gateway) polled as fast as they answer, over one
   shared connection (the default) and over a connection each (`shared: false`).
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import CAIRN, ROOT, Broker, free_port, wait_port  # noqa: E402

PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
SERVER = os.path.join(ROOT, "tests", "peers", "modbus_server.py")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def next_seq(config):
    """The outbox's next seq, from `cairn stats` (readable while cairn runs)."""
    out = subprocess.run([CAIRN, "stats", "--config", config], capture_output=True, text=True).stdout
    return int([l for l in out.splitlines() if l.startswith("next seq")][0].split(": ")[1])


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run(devices_yaml, seconds, broker_port):
    import tempfile
    d = tempfile.mkdtemp()
    config = os.path.join(d, "cairn.yaml")
    with open(config, "w") as f:
        f.write(f"gateway: {{id: bench, data_dir: {d}/data}}\n"
                f"mqtt: {{host: 127.0.0.1, port: {broker_port}, max_inflight: 1000}}\n"
                f"devices:\n{devices_yaml}")
    proc = subprocess.Popen([CAIRN, "run", "--config", config], stderr=subprocess.DEVNULL,
                            env={**os.environ, "RUST_LOG": "warn"})
    time.sleep(3)  # connect and settle
    cpu0, t0, seq0 = cpu_seconds(proc.pid), time.time(), next_seq(config)
    time.sleep(seconds)
    cpu1, t1, seq1 = cpu_seconds(proc.pid), time.time(), next_seq(config)
    rss = peak_rss_mib(proc.pid)
    proc.terminate()
    proc.wait()
    return (cpu1 - cpu0) / (t1 - t0) * 100, rss, (seq1 - seq0) / (t1 - t0)


def main():
    broker = Broker()
    port = free_port()
    server = subprocess.Popen([PYTHON, SERVER, str(port)], stdout=subprocess.PIPE, text=True)
    server.stdout.readline()
    wait_port(port)
    try:
        points = "".join(f"      - {{name: r{i}, table: holding, address: {i}}}\n" for i in range(20))
        devices = "".join(f"  - name: dev{n}\n    type: modbus\n    tcp: {{host: 127.0.0.1, port: {port}}}\n"
                          f"    interval: 1s\n    points:\n{points}" for n in range(100))
        cpu, rss, rate = run(devices, 30, broker.port)
        print(f"modbus tcp: 100 devices x 20 registers at 1 s: cairn CPU {cpu:.1f} % of one core, "
              f"peak RSS {rss:.1f} MiB, {rate:.0f} readings/s (100 expected)")
        one = (f"  - name: fast\n    type: modbus\n    tcp: {{host: 127.0.0.1, port: {port}}}\n"
               f"    interval: 1ms\n    points: [{{name: r, table: holding, address: 0}}]\n")
        cpu, rss, rate = run(one, 10, broker.port)
        print(f"modbus tcp: one device polled back to back: {rate:.0f} requests/s "
              f"(bounded by pymodbus, a Python server), cairn CPU {cpu:.1f} %")
        units_port = free_port()
        units = subprocess.Popen([PYTHON, SERVER, str(units_port), "--units", "50"],
                                 stdout=subprocess.PIPE, text=True)
        units.stdout.readline()
        wait_port(units_port)
        for shared in ["true", "false"]:
            devices = "".join(
                f"  - name: unit{u}\n    type: modbus\n    tcp: {{host: 127.0.0.1, port: {units_port}, shared: {shared}}}\n"
                f"    unit_id: {u}\n    interval: 1ms\n    points: [{{name: id, table: holding, address: 0}}]\n"
                for u in range(1, 51))
            cpu, rss, rate = run(devices, 10, broker.port)
            how = "one shared connection" if shared == "true" else "a connection each"
            print(f"modbus tcp: 50 units back to back over {how}: {rate:.0f} requests/s, cairn CPU {cpu:.1f} %")
        units.terminate()
    finally:
        server.terminate()
        broker.close()


if __name__ == "__main__":
    main()
