#!/usr/bin/env python3
"""LoRaWAN 1.0.x uplinks as an ABP end device sends them, built with the `cryptography`
package's AES and AES-CMAC, and Cayenne LPP payloads encoded and decoded by `pycayennelpp`.

The builder checks itself against public test vectors before it builds anything (lora-packet,
anthonykirby/lora-packet test/mic.js and test/decrypt.js), so a frame it builds is a frame a
real device would send.

Reads a JSON request on stdin:
    {"nwk": "<hex>", "app": "<hex>", "frames": [
        {"dev_addr": "49BE7DF1", "fcnt": 2, "fport": 1, "payload": "<hex>"},
        {"dev_addr": "...", "fcnt": 3, "fport": 2, "lpp": [[type_id, channel, [values...]], ...]},
        {"join_eui": "70B3D57ED0000001", "dev_eui": "...", "dev_nonce": "1234", "app_key": "<hex>"},
        ...]}
(EUIs and DevNonce MSB first, as on a label; a frame with `join_eui` is an OTAA join request.)
Writes {"frames": [{"phy": "<hex>", "fields": {"temperature_3": 27.2, ...}}, ...]}: `fields` are
what pycayennelpp decodes from the payload it encoded, under Cairn's field names.
"""
import json
import sys

from cayennelpp import LppFrame
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# pycayennelpp's type names -> Cairn's field names and axes.
NAMES = {
    "Digital Input": ("digital_input", [""]),
    "Digital Output": ("digital_output", [""]),
    "Analog Input": ("analog_input", [""]),
    "Analog Output": ("analog_output", [""]),
    "Generic Sensor": ("generic", [""]),
    "Illuminance": ("illuminance", [""]),
    "Presence": ("presence", [""]),
    "Temperature": ("temperature", [""]),
    "Humidity": ("humidity", [""]),
    "Accelerometer": ("accelerometer", ["x", "y", "z"]),
    "Barometer": ("barometer", [""]),
    "Voltage": ("voltage", [""]),
    "Current": ("current", [""]),
    "Frequency": ("frequency", [""]),
    "Percentage": ("percentage", [""]),
    "Altitude": ("altitude", [""]),
    "Load": ("load", [""]),
    "Concentration": ("concentration", [""]),
    "Power": ("power", [""]),
    "Distance": ("distance", [""]),
    "Energy": ("energy", [""]),
    "Direction": ("direction", [""]),
    "Time": ("unixtime", [""]),
    "Gyrometer": ("gyrometer", ["x", "y", "z"]),
    "Colour": ("colour", ["r", "g", "b"]),
    "Location": ("gps", ["latitude", "longitude", "altitude"]),
    "Switch": ("switch", [""]),
}


def aes_block(key, block):
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def uplink(dev_addr, fcnt, fport, payload, nwk, app, confirmed=False):
    """The PHYPayload of a data uplink; `fcnt` is the full 32-bit counter."""
    addr = dev_addr.to_bytes(4, "little")
    key = app if fport else nwk
    encrypted = bytearray()
    for i in range(0, len(payload), 16):
        a = bytes([1, 0, 0, 0, 0, 0]) + addr + fcnt.to_bytes(4, "little") + bytes([0, i // 16 + 1])
        stream = aes_block(key, a)
        encrypted += bytes(p ^ s for p, s in zip(payload[i:i + 16], stream))
    mhdr = 0x80 if confirmed else 0x40
    msg = bytes([mhdr]) + addr + bytes([0]) + (fcnt & 0xFFFF).to_bytes(2, "little")
    if payload:
        msg += bytes([fport]) + bytes(encrypted)
    b0 = bytes([0x49, 0, 0, 0, 0, 0]) + addr + fcnt.to_bytes(4, "little") + bytes([0, len(msg)])
    mac = cmac.CMAC(algorithms.AES(nwk))
    mac.update(b0 + msg)
    return msg + mac.finalize()[:4]


def join_request(join_eui, dev_eui, dev_nonce, app_key):
    """The PHYPayload of a LoRaWAN 1.0 join request; EUIs and nonce as big-endian bytes."""
    msg = bytes([0]) + join_eui[::-1] + dev_eui[::-1] + dev_nonce[::-1]
    mac = cmac.CMAC(algorithms.AES(app_key))
    mac.update(msg)
    return msg + mac.finalize()[:4]


def self_check():
    nwk = bytes.fromhex("44024241ed4ce9a68c6a8bc055233fd3")
    app = bytes.fromhex("ec925802ae430ca77fd3dd73cb2cc588")
    assert uplink(0x49BE7DF1, 2, 1, b"test", nwk, app).hex().upper() == \
        "40F17DBE4900020001954378762B11FF0D"
    assert uplink(0x49BE7DF1, 4, 1, b"The quick brown fox jumps over the lazy dog.", nwk, app).hex() == \
        "40f17dbe490004000155332de41a11adc072553544429ce7787707d1c316e027e7e5e334263376affb8aa17ad30075293f28dea8a20af3c5e7"
    # As npm lora-packet builds it (tests/peers/lorawan_device.js join).
    assert join_request(bytes.fromhex("70B3D57ED0000001"), bytes.fromhex("0102030405060708"),
                        bytes.fromhex("1234"), bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C")).hex() == \
        "00010000d07ed5b3700807060504030201341284408b45"


def lpp_fields(payload):
    fields = {}
    for item in LppFrame.from_bytes(payload).data:
        name, axes = NAMES[item.type.name]
        for axis, value in zip(axes, item.value):
            field = f"{name}_{item.channel}" + (f"_{axis}" if axis else "")
            fields[field] = value
    return fields


def main():
    self_check()
    request = json.load(sys.stdin)
    nwk, app = bytes.fromhex(request["nwk"]), bytes.fromhex(request["app"])
    out = []
    for frame in request["frames"]:
        if "join_eui" in frame:
            phy = join_request(*(bytes.fromhex(frame[k]) for k in ["join_eui", "dev_eui", "dev_nonce", "app_key"]))
            out.append({"phy": phy.hex()})
            continue
        fields = None
        if "lpp" in frame:
            lpp = LppFrame()
            for type_id, channel, values in frame["lpp"]:
                lpp.add_by_type(type_id, channel, tuple(values))
            payload = bytes(lpp)
            fields = lpp_fields(payload)
        else:
            payload = bytes.fromhex(frame.get("payload", ""))
        phy = uplink(int(frame["dev_addr"], 16), frame["fcnt"], frame.get("fport", 1), payload, nwk, app,
                     frame.get("confirmed", False))
        out.append({"phy": phy.hex(), "payload": payload.hex(), "fields": fields})
    json.dump({"frames": out}, sys.stdout)


if __name__ == "__main__":
    main()
