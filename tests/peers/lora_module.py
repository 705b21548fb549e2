#!/usr/bin/env python3
"""A serial LoRa module in point-to-point mode on a serial device, speaking the command set and
line format of the real one, as their manuals give them:

- RN2483/RN2903 (Microchip "RN2483 LoRa Technology Module Command Reference User's Guide"):
  `radio rxstop` -> `ok`; `mac pause` -> a number of ms; `radio set ...` -> `ok`;
  `radio rx 0` -> `ok`, then one `radio_rx  <hex>` (two spaces) or `radio_err`;
  `radio get snr` -> an integer.
- RAK3172 with RUI3 ("RUI3 AT command manual"): `AT+PRECV=0` -> `OK` (stop receiving);
  `AT+NWM=0` -> `OK` (after a boot banner when it switches mode); `AT+P2P=...` -> `OK`;
  `AT+PRECV=65534` -> `OK`, then one `+EVT:RXP2P:<rssi>:<snr>:<hex>` per packet.

    lora_module.py --kind rn2483|rak3172 --tty PATH --log FILE PACKET...

Each PACKET is a hex payload (or the word `ERR` for a reception error or timeout, `NOISE` for a
garbage line) received once the module listens; every command received is appended to FILE,
which exists once the module listens.
"""
import argparse
import time

import serial


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", required=True, choices=["rn2483", "rak3172"])
    parser.add_argument("--tty", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("packets", nargs="*")
    args = parser.parse_args()
    port = serial.Serial(args.tty, 57600 if args.kind == "rn2483" else 115200, timeout=0.1)
    # The log's existence tells the test that the module is listening.
    open(args.log, "w").close()
    packets = list(args.packets)
    buffer = b""
    listening = False

    def say(line):
        port.write(line.encode() + b"\r\n")
        port.flush()

    def packet_line(packet):
        if packet == "NOISE":
            return "\x15garbage%%"
        if args.kind == "rn2483":
            return "radio_err" if packet == "ERR" else f"radio_rx  {packet}"
        if packet == "ERR":
            return "+EVT:RXP2P RECEIVE TIMEOUT"
        return f"+EVT:RXP2P:-43:7:{packet}"

    while True:
        buffer += port.read(256)
        while b"\r\n" in buffer:
            line, buffer = buffer.split(b"\r\n", 1)
            command = line.decode(errors="replace")
            with open(args.log, "a") as log:
                log.write(command + "\n")
            if args.kind == "rn2483":
                if command == "mac pause":
                    say("4294967245")
                elif command.startswith("radio set "):
                    say("ok")
                elif command == "radio rx 0":
                    say("ok")
                    listening = True
                elif command == "radio rxstop":
                    say("ok")
                    listening = False
                elif command == "radio get snr":
                    say("-7")
                else:
                    say("invalid_param")
            else:
                if command == "AT+NWM=0":
                    say("RAKwireless RAK3172-E Example")
                    say("------------------------------------------------------")
                    say("Current Work Mode: LoRa P2P.")
                    say("OK")
                elif command.startswith("AT+P2P="):
                    say("OK")
                elif command == "AT+PRECV=65534":
                    say("OK")
                    listening = True
                elif command == "AT+PRECV=0":
                    say("OK")
                    listening = False
                else:
                    say("AT_PARAM_ERROR")
        if listening and packets:
            time.sleep(0.05)
            say(packet_line(packets.pop(0)))
            # The RN2483 hears one packet per `radio rx`; the RAK3172 keeps listening.
            listening = args.kind == "rak3172"


if __name__ == "__main__":
    main()
