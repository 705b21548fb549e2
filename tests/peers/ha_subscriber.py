"""Home Assistant's side of MQTT discovery, reproduced with paho-mqtt and Jinja2 (the template
engine Home Assistant uses), to check what Cairn announces.

Usage: ha_subscriber.py PORT COUNT [--set UNIQUE_ID=NUMBER] [--switch UNIQUE_ID=on|off] ...

Subscribes to homeassistant/# as Home Assistant does, and for each retained config:
  - checks the keys Home Assistant's schema requires and allows for its component (a key it
    does not know would get the entity refused);
  - subscribes to its availability and state topics and renders its value_template on each
    state message with the variables Home Assistant gives (value, value_json, this), then maps
    the result as the component does (payload_on/state_on, "None" for unknown, a number in
    min..max);
Once COUNT entities have a state and are available, it sends each command the way the entity
does (number: the value, as an integer when whole; switch: payload_on/payload_off on
command_topic), and waits until the state reads back. Prints one JSON line:
{"entities": {unique_id: {"component", "state", "available", "config"}}, "problems": [...]}"""
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from jinja2.sandbox import ImmutableSandboxedEnvironment

COMMON = {"availability", "availability_mode", "availability_template", "availability_topic",
          "device", "enabled_by_default", "encoding", "entity_category", "entity_picture", "icon",
          "json_attributes_template", "json_attributes_topic", "name", "object_id",
          "default_entity_id", "origin", "platform", "qos", "unique_id", "payload_available",
          "payload_not_available", "value_template", "state_topic"}
ALLOWED = {
    "sensor": COMMON | {"device_class", "expire_after", "force_update", "last_reset_value_template",
                        "options", "suggested_display_precision", "state_class", "unit_of_measurement"},
    "binary_sensor": COMMON | {"device_class", "expire_after", "force_update", "off_delay",
                               "payload_off", "payload_on"},
    "number": COMMON | {"command_template", "command_topic", "device_class", "min", "max", "mode",
                        "optimistic", "payload_reset", "retain", "step", "unit_of_measurement"},
    "switch": COMMON | {"command_template", "command_topic", "device_class", "optimistic",
                        "payload_off", "payload_on", "retain", "state_off", "state_on"},
}
REQUIRED = {"sensor": {"state_topic"}, "binary_sensor": {"state_topic"},
            "number": {"command_topic"}, "switch": {"command_topic"}}
STATE_CLASSES = {"measurement", "total", "total_increasing"}

port, count = int(sys.argv[1]), int(sys.argv[2])
commands = []
args = sys.argv[3:]
for flag, arg in zip(args[::2], args[1::2]):
    uid, value = arg.split("=", 1)
    commands.append((flag, uid, value))

env = ImmutableSandboxedEnvironment()
lock = threading.Lock()
entities = {}
problems = []
ready = threading.Event()


class This:
    def __init__(self, state):
        self.state = state


def check(component, config, topic):
    missing = REQUIRED[component] - set(config)
    if missing:
        problems.append(f"{topic}: lacks required {sorted(missing)}")
    extra = set(config) - ALLOWED[component]
    if extra:
        problems.append(f"{topic}: keys Home Assistant does not know: {sorted(extra)}")
    if "unique_id" not in config or "identifiers" not in config.get("device", {}):
        problems.append(f"{topic}: without unique_id and device identifiers it joins no device")
    if config.get("state_class", "measurement") not in STATE_CLASSES:
        problems.append(f"{topic}: state_class {config['state_class']}")


def apply(entity, payload):
    config, component = entity["config"], entity["component"]
    try:
        value_json = json.loads(payload)
    except ValueError:
        value_json = None
    template = config.get("value_template")
    rendered = payload
    if template:
        rendered = env.from_string(template).render(
            value=payload, value_json=value_json, this=This(entity["state"] or "unknown")).strip()
    if rendered == "None":
        entity["state"] = None
    elif component in ("binary_sensor",):
        on, off = config.get("payload_on", "ON"), config.get("payload_off", "OFF")
        if rendered in (on, off):
            entity["state"] = "on" if rendered == on else "off"
        else:
            problems.append(f"{entity['uid']}: no matching payload for {rendered!r}")
    elif component == "switch":
        on = config.get("state_on", config.get("payload_on", "ON"))
        off = config.get("state_off", config.get("payload_off", "OFF"))
        if rendered in (on, off):
            entity["state"] = "on" if rendered == on else "off"
        else:
            problems.append(f"{entity['uid']}: no matching state for {rendered!r}")
    elif component == "number":
        number = float(rendered)
        if not config.get("min", 1) <= number <= config.get("max", 100):
            problems.append(f"{entity['uid']}: {number} is out of range")
        else:
            entity["state"] = str(number)
    else:
        if "state_class" in config:
            float(rendered)  # Home Assistant refuses a non-numeric state for such a sensor
        entity["state"] = rendered


def on_message(client, _userdata, message):
    topic, payload = message.topic, message.payload.decode()
    with lock:
        parts = topic.split("/")
        if parts[0] == "homeassistant" and parts[-1] == "config" and len(parts) == 5:
            component, config = parts[1], json.loads(payload)
            if component not in ALLOWED:
                problems.append(f"{topic}: unexpected component")
                return
            check(component, config, topic)
            uid = config.get("unique_id", topic)
            entities[uid] = {"uid": uid, "component": component, "config": config, "state": None,
                             "available": None}
            for availability in config.get("availability", []):
                client.subscribe(availability["topic"], qos=1)
            if "state_topic" in config:
                client.subscribe(config["state_topic"], qos=1)
            return
        for entity in entities.values():
            config = entity["config"]
            for availability in config.get("availability", []):
                if availability["topic"] == topic:
                    if payload == availability.get("payload_available", "online"):
                        entity["available"] = True
                    elif payload == availability.get("payload_not_available", "offline"):
                        entity["available"] = False
            if config.get("state_topic") == topic:
                try:
                    apply(entity, payload)
                except Exception as e:  # noqa: BLE001 - report, as Home Assistant logs it
                    problems.append(f"{entity['uid']}: template or state failed: {e!r}")
        if len(entities) >= count and all(e["state"] is not None and e["available"]
                                          for e in entities.values()):
            ready.set()


def wait(predicate, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with lock:
            if predicate():
                return True
        time.sleep(0.05)
    return False


client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="home-assistant")
client.on_message = on_message
client.on_connect = lambda c, *_: c.subscribe("homeassistant/#", qos=1)
client.connect("127.0.0.1", port)
client.loop_start()
if not ready.wait(30):
    problems.append("not every entity got a state and its availability in 30 s")
for flag, uid, value in commands:
    entity = entities.get(uid)
    if entity is None:
        problems.append(f"no entity {uid}")
        continue
    config = entity["config"]
    if flag == "--set":
        number = float(value)
        payload = str(int(number)) if number.is_integer() else str(number)
        expect = str(number)
    else:
        payload = config.get("payload_on" if value == "on" else "payload_off")
        expect = value
    client.publish(config["command_topic"], payload, qos=1)
    if not wait(lambda: entity["state"] == expect):
        problems.append(f"{uid}: state {entity['state']!r} after the command, not {expect!r}")
client.loop_stop()
with lock:
    print(json.dumps({"entities": {uid: {k: e[k] for k in ("component", "state", "available", "config")}
                                   for uid, e in entities.items()},
                      "problems": problems}), flush=True)
