#!/usr/bin/env python3
"""SD-card wear: bytes Cairn writes to the block layer per reading, fsyncs and CPU.

    scripts/bench_wear.py [--seconds 120] [--before BIN] [--variant LABEL=YAML ...] [--under DIR]

For 1, 10 and 100 readings per second (1 device at 1 s, 10 devices at 1 s, 10 devices at
100 ms, three values each), with a broker up (every reading delivered and deleted) and with it
down (the backlog grows), runs the release binary with its data folder on this machine's disk
(not tmpfs) and reads, over a window after a warm-up:

  - write_bytes of /proc/<pid>/io: what reached the block layer (what wears a card), per
    reading and per day at that rate;
  - fsync and fdatasync calls per second (strace -c, attached for the window);
  - CPU seconds per hour (utime + stime of /proc/<pid>/stat);
  - the bytes Cairn logged, apart (its log goes to tmpfs: on a Pi, journald writes it).

Every scenario runs each variant back to back, so that rows compare within one run: `now`
(this build, defaults), `before` (`--before`: another build, e.g. of an earlier commit, with
its defaults), and each `--variant LABEL=YAML`, this build with YAML appended to its
`buffer:` section (e.g. "commit_interval: 1s"). Needs mosquitto and strace.

`--under DIR` puts the data folders there (default: target/). Raspberry Pi OS mounts its root
`noatime`; a `relatime` disk (this machine's) also writes an inode for each read after a
write, so a Pi's numbers come from an ext4 mounted as the Pi mounts it, e.g.
    truncate -s 1G /tmp/pi.img && mkfs.ext4 -q /tmp/pi.img && mkdir -p /mnt/pi &&
    mount -o loop,noatime /tmp/pi.img /mnt/pi
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench import CAIRN, ROOT, free_port, wait_port
from bench_modbus import cpu_seconds, next_seq

SCENARIOS = [(1, 1, "1s"), (10, 10, "1s"), (100, 10, "100ms")]
WARM_UP = 10.0


def config(data, port, devices, interval, extra):
    devs = "".join(
        f"  - name: dev{i}\n    type: sim\n    interval: {interval}\n    seed: {i}\n    values:\n"
        f"      - name: temperature\n        decimals: 1\n        sine: {{mean: 20, amplitude: 5, period: 1h, noise: 0.2}}\n"
        f"      - name: pump\n        toggle: {{period: 10m}}\n"
        f"      - name: pulses\n        counter: {{}}\n"
        for i in range(devices)
    )
    return (f"gateway:\n  id: wear\n  data_dir: {data}\n"
            f"mqtt:\n  host: 127.0.0.1\n  port: {port}\n  reconnect_min: 1s\n  reconnect_max: 5s\n"
            f"buffer:\n{'' if 'synchronous' in extra else '  synchronous: full' + chr(10)}{extra}"
            f"feed:\n  listen: 127.0.0.1:0\n"
            f"devices:\n{devs}")


def proc_io(pid):
    with open(f"/proc/{pid}/io") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f)}


def run(binary, rate, devices, interval, broker_up, seconds, extra, under=os.path.join(ROOT, "target")):
    work = tempfile.mkdtemp(prefix="wear-", dir=under)
    os.chmod(work, 0o777)
    port = free_port()
    broker = None
    if broker_up:
        conf = os.path.join(work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        broker = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        wait_port(port)
    path = os.path.join(work, "cairn.yaml")
    with open(path, "w") as f:
        f.write(config(os.path.join(work, "data"), port, devices, interval, extra))
    # The log goes to tmpfs and is counted apart: on a Pi, journald writes it, not Cairn.
    log_path = os.path.join("/dev/shm", os.path.basename(work) + ".log")
    log = open(log_path, "wb")
    cairn = subprocess.Popen([binary, "run", "--config", path], stdout=log, stderr=log)
    try:
        time.sleep(WARM_UP)
        seq0, io0, cpu0, t0 = next_seq(path), proc_io(cairn.pid), cpu_seconds(cairn.pid), time.monotonic()
        log0 = os.path.getsize(log_path)
        strace = subprocess.Popen(["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-p", str(cairn.pid)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(seconds)
        strace.terminate()
        syscalls = strace.communicate()[1]
        seq1, io1, cpu1, t1 = next_seq(path), proc_io(cairn.pid), cpu_seconds(cairn.pid), time.monotonic()
        logged = os.path.getsize(log_path) - log0
    finally:
        cairn.terminate()
        cairn.wait()
        if broker:
            broker.terminate()
            broker.wait()
    # strace -c columns: % time, seconds, usecs/call, calls, [errors,] syscall.
    fsyncs = 0
    for line in syscalls.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in ("fsync", "fdatasync"):
            fsyncs += int(parts[3])
    readings = max(seq1 - seq0, 1)
    elapsed = t1 - t0
    written = io1["write_bytes"] - io0["write_bytes"]
    shutil.rmtree(work, ignore_errors=True)
    os.remove(log_path)
    return {
        "rate": rate, "broker": "up" if broker_up else "down", "readings": readings,
        "per_reading": written / readings, "per_day": written / elapsed * 86400,
        "fsyncs": fsyncs / elapsed, "cpu_per_hour": (cpu1 - cpu0) / elapsed * 3600,
        "log_per_reading": logged / readings,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--before", help="another cairn binary, run with its defaults")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=YAML")
    parser.add_argument("--rates", default="1,10,100", help="which scenarios (readings/s)")
    parser.add_argument("--broker", default="up,down", help="up, down or both")
    parser.add_argument("--under", default=os.path.join(ROOT, "target"), help="where the data folders go")
    args = parser.parse_args()
    if not os.path.exists(CAIRN):
        sys.exit("build the release binary first: cargo build --release")
    variants = [("now", CAIRN, "")]
    if args.before:
        variants.insert(0, ("before", args.before, ""))
    for v in args.variant:
        label, _, extra = v.partition("=")
        variants.append((label, CAIRN, "".join(f"  {line}\n" for line in extra.split("\\n"))))
    rates = {int(r) for r in args.rates.split(",")}
    print("| settings | readings/s | broker | readings | bytes written per reading | per day | fsyncs/s | CPU s/hour | log per reading |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rate, devices, interval in SCENARIOS:
        if rate not in rates:
            continue
        for up in [b == "up" for b in args.broker.split(",")]:
            for label, binary, extra in variants:
                r = run(binary, rate, devices, interval, up, args.seconds, extra, args.under)
                print(f"| {label} | {r['rate']} | {r['broker']} | {r['readings']:,} | "
                      f"{r['per_reading']:,.0f} B | {r['per_day'] / 1e6:,.1f} MB | {r['fsyncs']:.1f} | "
                      f"{r['cpu_per_hour']:.1f} | {r['log_per_reading']:,.0f} B |", flush=True)


if __name__ == "__main__":
    main()
