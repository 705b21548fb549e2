#!/usr/bin/env python3
"""Does NATS server's MQTT keep the QoS 1 messages it acknowledged through a restart?

    .venv/bin/python tests/peers/nats_restart_loss.py [--signal TERM|INT] [--rounds 3]

No Cairn involved: paho-mqtt publishes 2,000 numbered QoS 1 messages (1 ms apart) to a private
nats-server (ephemeral ports, JetStream file store), while a paho subscriber with a persistent
session (clean_session false) receives them; the broker is stopped with the signal a second
in and started again. Each round prints how many messages the broker acknowledged (PUBACK)
but never delivered, 45 s after the end. The README's "Brokers" section quotes the result.
"""
import argparse
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import paho.mqtt.client as mqtt


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def round_trip(sig):
    work = tempfile.mkdtemp(prefix="nats-loss-")
    port, client_port = free_port(), free_port()
    conf = os.path.join(work, "nats.conf")
    with open(conf, "w") as f:
        f.write(f'listen: 127.0.0.1:{client_port}\nserver_name: loss\n'
                f'jetstream {{ store_dir: "{work}/js" }}\nmqtt {{ listen: 127.0.0.1:{port} }}\n')

    def start():
        proc = subprocess.Popen(["nats-server", "-c", conf, "--log", f"{work}/log"])
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return proc
            except OSError:
                time.sleep(0.02)

    broker = [start()]
    received, acked, seq_of = set(), set(), {}
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="loss-sub", clean_session=False)
    sub.on_connect = lambda c, *_: c.subscribe("loss/#", qos=1)
    sub.on_message = lambda c, u, m: received.add(int(m.payload))
    sub.reconnect_delay_set(0.1, 0.5)
    sub.connect("127.0.0.1", port, 5)
    sub.loop_start()
    time.sleep(1)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="loss-pub")
    pub.reconnect_delay_set(0.1, 0.5)
    pub.on_publish = lambda c, u, mid, *_: acked.add(seq_of[mid]) if mid in seq_of else None
    pub.connect("127.0.0.1", port, 5)
    pub.loop_start()

    def restart():
        time.sleep(1.0)
        broker[0].send_signal(sig)
        broker[0].wait()
        time.sleep(0.3)
        broker[0] = start()

    threading.Thread(target=restart).start()
    for i in range(1, 2001):
        seq_of[pub.publish("loss/a", str(i), qos=1).mid] = i
        time.sleep(0.001)
    for _ in range(45):
        if received >= acked and len(acked) == 2000:
            break
        time.sleep(1)
    lost = sorted(acked - received)
    pub.loop_stop()
    sub.loop_stop()
    broker[0].terminate()
    broker[0].wait()
    shutil.rmtree(work, ignore_errors=True)
    return len(acked), len(received), lost


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signal", default="TERM", choices=["TERM", "INT"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    version = subprocess.run(["nats-server", "--version"], capture_output=True, text=True).stdout.strip()
    print(f"{version}, stopped with SIG{args.signal}")
    for n in range(args.rounds):
        acked, received, lost = round_trip(getattr(signal, f"SIG{args.signal}"))
        print(f"round {n + 1}: 2000 published, {acked} acknowledged, {received} delivered, "
              f"{len(lost)} acknowledged but never delivered {lost[:10]}")


if __name__ == "__main__":
    main()
