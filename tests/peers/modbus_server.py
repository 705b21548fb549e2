"""A Modbus TCP device simulated by pymodbus, with a register map whose values the tests know.

Usage: modbus_server.py PORT (Modbus TCP) or modbus_server.py --rtu DEVICE (Modbus RTU at
19200 baud on a serial device, e.g. one end of a socat pty pair). Prints "ready" once
listening. Unit 1 holds the map below; unit 2 a second device whose register 8 is 7. Other unit
ids get an exception response (a real RS-485 bus would stay silent).

    modbus_server.py PORT --units N [--one-connection REFUSALS] [--silent]

plays a TCP-to-RTU gateway: units 1 to N, each holding its own id in register 0. With
--silent, requests for unit ids that no device has go unanswered, as on a real RS-485 bus
(pymodbus otherwise answers them with exception 4, "server device failure"). With
--one-connection, as a Moxa MGate that takes few connections: behind a front that takes one
connection at a time and closes any other at once, appending a line to the file REFUSALS for
each."""
import asyncio
import socket
import sys

from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus import FramerType
from pymodbus.server import StartAsyncSerialServer, StartAsyncTcpServer

HOLDING = {
    0: [0x4366, 0x199A],  # f32 230.1, abcd
    2: [0x199A, 0x4366],  # f32 230.1, cdab
    4: [0x6643, 0x9A19],  # f32 230.1, badc
    6: [0x9A19, 0x6643],  # f32 230.1, dcba
    8: [0xFFFE],  # i16 -2
    9: [0x0001, 0x0002],  # u32 65538
    11: [215],  # u16 215, scale 0.1 -> 21.5
    12: [0x5344, 0x4D31, 0x3230],  # string "SDM120"
    15: [0b1000],  # bit 3 set
    20: [0xFFFF, 0xFFFF, 0xFFFF, 0xFFF6],  # i64 -10
}
INPUT = {0: [0x4248, 0x0000]}  # f32 50.0
COILS = {0: [1, 0, 1]}


def block(values, size):
    flat = [0] * size
    for address, words in values.items():
        flat[address:address + len(words)] = words
    # pymodbus maps wire address N to block address N + 1.
    return ModbusSequentialDataBlock(1, flat)


def device(holding):
    return ModbusDeviceContext(hr=block(holding, 100), ir=block(INPUT, 100), co=block(COILS, 100),
                               di=block({}, 100))


async def gateway(port, units, refusals, silent):
    context = ModbusServerContext(devices={u: device({0: [u]}) for u in range(1, units + 1)}, single=False)
    if refusals is None:
        print("ready", flush=True)
        await StartAsyncTcpServer(context=context, address=("127.0.0.1", port), ignore_missing_devices=silent)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        inner = s.getsockname()[1]
    server = asyncio.create_task(StartAsyncTcpServer(context=context, address=("127.0.0.1", inner),
                                                     ignore_missing_devices=silent))
    for _ in range(500):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", inner)
            w.close()
            break
        except OSError:
            await asyncio.sleep(0.01)
    busy = []

    async def front(reader, writer):
        if busy:
            with open(refusals, "a") as f:
                f.write("refused\n")
            writer.close()
            return
        busy.append(writer)
        to_r, to_w = await asyncio.open_connection("127.0.0.1", inner)

        async def pipe(r, w):
            while data := await r.read(4096):
                w.write(data)
                await w.drain()
            w.close()

        await asyncio.gather(pipe(reader, to_w), pipe(to_r, writer), return_exceptions=True)
        busy.clear()

    listening = await asyncio.start_server(front, "127.0.0.1", port)
    print("ready", flush=True)
    await asyncio.gather(listening.serve_forever(), server)


def stay_silent_for_missing_units():
    """pymodbus 3.16 converts the server context to its simulator core, whose device lookup
    raises KeyError for a missing id (answered as exception 4) instead of NoSuchIdException
    (which ignore_missing_devices turns into silence). Restore the documented behaviour."""
    from pymodbus.exceptions import NoSuchIdException
    from pymodbus.simulator import simcore

    def get_device(self, device_id):
        if device_id in self.devices:
            return self.devices[device_id]
        raise NoSuchIdException(f"no device {device_id}")

    simcore.SimCore._SimCore__get_device = get_device


async def main(args):
    silent = "--silent" in args
    if silent:
        stay_silent_for_missing_units()
    if "--units" in args:
        refusals = args[args.index("--one-connection") + 1] if "--one-connection" in args else None
        await gateway(int(args[0]), int(args[args.index("--units") + 1]), refusals, silent)
        return
    context = ModbusServerContext(devices={1: device(HOLDING), 2: device({8: [7]})}, single=False)
    print("ready", flush=True)
    if args[0] == "--rtu":
        await StartAsyncSerialServer(context=context, port=args[1], framer=FramerType.RTU, baudrate=19200,
                                     ignore_missing_devices=silent)
    else:
        await StartAsyncTcpServer(context=context, address=("127.0.0.1", int(args[0])), ignore_missing_devices=silent)


asyncio.run(main(sys.argv[1:]))
