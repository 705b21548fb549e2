// A LoRaWAN 1.0 end device played by the npm package lora-packet, an implementation
// independent of Cairn's: it builds join requests and uplinks, and opens join accepts.
//
//   node lorawan_device.js join APPKEY JOINEUI DEVEUI DEVNONCE   -> {"phy": hex}
//   node lorawan_device.js accept APPKEY DEVNONCE PHY            -> the accept's fields and the
//                                                                    session keys derived from it
//   node lorawan_device.js uplink NWKSKEY APPSKEY DEVADDR FCNT FPORT PAYLOAD [FLAGS]
//                                                                -> {"phy": hex}
//       FLAGS, comma-separated: "confirmed", "ack" (acknowledging a confirmed downlink),
//       "time" (a DeviceTimeReq MAC command in FOpts)
//   node lorawan_device.js downlink NWKSKEY APPSKEY PHY FCNT       -> the downlink's fields, its
//                                                                    MIC checked, its payload
//                                                                    decrypted (FCNT: the full
//                                                                    32-bit FCntDown expected)
// EUIs, DevAddr and DevNonce are written MSB first, as on a device's label; PHY and PAYLOAD
// are hex. Prints one JSON line.
const lora = require("lora-packet");

const hex = (s) => Buffer.from(s, "hex");
const [command, ...args] = process.argv.slice(2);
let out;
if (command === "join") {
  const [appKey, joinEui, devEui, devNonce] = args;
  const packet = lora.fromFields(
    { MType: "Join Request", AppEUI: hex(joinEui), DevEUI: hex(devEui), DevNonce: hex(devNonce) },
    null, null, hex(appKey));
  out = { phy: packet.getPHYPayload().toString("hex") };
} else if (command === "accept") {
  const [appKey, devNonce, phy] = args;
  const encrypted = lora.fromWire(hex(phy));
  const accept = lora.fromWire(lora.decryptJoinAccept(encrypted, hex(appKey)));
  const keys = lora.generateSessionKeys(hex(appKey), accept.NetID, accept.AppNonce, hex(devNonce));
  out = {
    mtype: accept.getMType(),
    mic_ok: lora.verifyMIC(accept, null, hex(appKey)),
    dev_addr: accept.DevAddr.toString("hex").toUpperCase(),
    net_id: accept.NetID.toString("hex"),
    app_nonce: accept.AppNonce.toString("hex"),
    dl_settings: accept.DLSettings.readUInt8(0),
    rx_delay: accept.RxDelay.readUInt8(0),
    nwk_s_key: keys.NwkSKey.toString("hex"),
    app_s_key: keys.AppSKey.toString("hex"),
  };
} else if (command === "uplink") {
  const [nwkSKey, appSKey, devAddr, fcnt, fport, payload, flags = ""] = args;
  const flag = flags.split(",");
  const packet = lora.fromFields(
    {
      MType: flag.includes("confirmed") ? "Confirmed Data Up" : "Unconfirmed Data Up",
      DevAddr: hex(devAddr), FCnt: Number(fcnt), FPort: Number(fport), payload: hex(payload),
      FCtrl: { ACK: flag.includes("ack") },
      FOpts: flag.includes("time") ? Buffer.from([0x0d]) : Buffer.alloc(0),
    },
    hex(appSKey), hex(nwkSKey));
  out = { phy: packet.getPHYPayload().toString("hex") };
} else if (command === "downlink") {
  const [nwkSKey, appSKey, phy, fcnt] = args;
  const packet = lora.fromWire(hex(phy));
  const msb = Buffer.alloc(2);
  msb.writeUInt16LE(Number(fcnt) >>> 16);
  const port = packet.getFPort();
  out = {
    mtype: packet.getMType(),
    dir: packet.getDir(),
    dev_addr: packet.DevAddr.toString("hex").toUpperCase(),
    fcnt: packet.getFCnt(),
    fport: port,
    ack: packet.getFCtrlACK(),
    fpending: packet.getFCtrlFPending(),
    fopts: packet.FOpts.toString("hex"),
    mic_ok: lora.verifyMIC(packet, hex(nwkSKey), null, msb),
    payload: port === null ? "" : lora.decrypt(packet, hex(appSKey), hex(nwkSKey), msb).toString("hex"),
  };
} else {
  console.error("usage: lorawan_device.js join|accept|uplink|downlink ...");
  process.exit(2);
}
console.log(JSON.stringify(out));
