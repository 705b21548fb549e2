"""Independent reference for Cairn's NMEA decoding: parses a log with pynmea2 and prints, per
GGA/RMC/GSA sentence, the values Cairn's `gps` profile publishes, as JSON lines."""
import json
import sys

import pynmea2

for line in open(sys.argv[1], encoding="ascii"):
    msg = pynmea2.parse(line.strip(), check=True)
    if isinstance(msg, pynmea2.types.talker.GGA):
        out = {"latitude": msg.latitude, "longitude": msg.longitude, "altitude": float(msg.altitude),
               "fix_quality": int(msg.gps_qual), "satellites": int(msg.num_sats), "hdop": float(msg.horizontal_dil)}
    elif isinstance(msg, pynmea2.types.talker.RMC):
        out = {"latitude": msg.latitude, "longitude": msg.longitude, "speed_knots": float(msg.spd_over_grnd),
               "course": float(msg.true_course), "fix_valid": msg.status == "A"}
    elif isinstance(msg, pynmea2.types.talker.GSA):
        used = [s for s in (getattr(msg, f"sv_id{i:02d}") for i in range(1, 13)) if s]
        out = {"fix_mode": int(msg.mode_fix_type), "pdop": float(msg.pdop), "hdop": float(msg.hdop),
               "vdop": float(msg.vdop), "satellites_used": len(used)}
    else:
        continue
    print(json.dumps(out))
