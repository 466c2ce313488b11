"""A stand-in for a chain of Dynamixel X-series servos on a serial bus (a GELLO leader arm behind its
U2D2), on a pseudo-terminal, for testing clients through the real ``dynamixel-sdk``.

It answers Dynamixel Protocol 2.0 (ROBOTIS e-Manual, "Protocol 2.0") as the servos do:

- Packets: ``FF FF FD 00 | id | length (2, LE) | instruction | parameters | CRC-16 (2, LE)``; the
  length counts instruction, parameters and CRC; ``FF FF FD`` inside the packet is sent as
  ``FF FF FD FD`` (byte stuffing); the CRC is CRC-16 with polynomial 0x8005 over everything
  before it. A status packet has instruction 0x55 and an error byte before its parameters.
- Emulated instructions: ping (0x01, also broadcast: every servo answers in id order; the answer
  carries the model number and firmware version), read (0x02), write (0x03), sync read (0x82: each
  listed servo answers in turn), sync write (0x83: no answer). A packet whose CRC is wrong is
  answered with error 0x03 (CRC error), an instruction not emulated with 0x02 (instruction error),
  a read or write outside the control table with 0x07 (access error), a write to the EEPROM area
  while the torque is on with 0x07, a write of the wrong size with 0x05 (data length error).
- The control table of the XL330-M288-T (GELLO's servo): model number 1200 at 0, firmware version
  at 6, id 7, baud rate 8, return delay 9, operating mode 11, torque enable 64, LED 65, goal
  current 102, goal position 116, present current 126, present velocity 128, present position
  132 (int32, 4096 ticks per turn, 2048 = the middle), present input voltage 144, temperature 146.

Timing: each packet takes its bytes' time on the wire at ``baudrate`` (10 bits a byte), and each
servo answers after its return delay time (address 9, 2 us units; 250 = 0.5 ms from the
factory), so a client's read rate is the one the real bus gives (the U2D2's USB latency timer is
not emulated: set it to 1 ms on the real one, README "Collecting demonstrations").

Faults, for tests: :meth:`DynamixelBusStandin.silence` (a servo stops answering: the client times
out), :meth:`corrupt_next` (the next answer of a servo has a wrong CRC), :meth:`unplug` (the bus
goes away: the pseudo-terminal closes).

    bus = DynamixelBusStandin(ids=[1, 2, 3, 4, 5, 6, 7]).start()
    bus.port            # "/dev/pts/N": open it with dynamixel_sdk.PortHandler
    bus.set_position(3, 1024)
"""

from __future__ import annotations

import os
import struct
import threading
import time
import tty

HEADER = b"\xff\xff\xfd\x00"
PING, READ, WRITE, SYNC_READ, SYNC_WRITE, STATUS = 0x01, 0x02, 0x03, 0x82, 0x83, 0x55
BROADCAST = 0xFE
ERR_INSTRUCTION, ERR_CRC, ERR_DATA_LENGTH, ERR_ACCESS = 0x02, 0x03, 0x05, 0x07
EEPROM_END = 64

# address: (size, writable, initial value) of the XL330-M288-T's control table (the part emulated)
CONTROL_TABLE = {
    0: (2, False, 1200), 6: (1, False, 46), 7: (1, True, 1), 8: (1, True, 1), 9: (1, True, 250),
    11: (1, True, 3), 64: (1, True, 0), 65: (1, True, 0), 102: (2, True, 1750), 116: (4, True, 2048),
    126: (2, False, 0), 128: (4, False, 0), 132: (4, False, 2048), 144: (2, False, 50), 146: (1, False, 30),
}


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """Dynamixel Protocol 2.0's CRC-16 (polynomial 0x8005, initial value 0, not reflected)."""
    crc = 0
    for b in data:
        crc = ((crc << 8) ^ _TABLE[((crc >> 8) ^ b) & 0xFF]) & 0xFFFF
    return crc


def stuff(body: bytes) -> bytes:
    """Byte stuffing: FF FF FD -> FF FF FD FD."""
    return body.replace(b"\xff\xff\xfd", b"\xff\xff\xfd\xfd")


def unstuff(body: bytes) -> bytes:
    return body.replace(b"\xff\xff\xfd\xfd", b"\xff\xff\xfd")


def packet(dxl_id: int, instruction: int, params: bytes = b"") -> bytes:
    """A Protocol 2.0 packet (instruction or, with ``instruction=0x55`` and the error byte first in
    ``params``, status)."""
    body = stuff(bytes([instruction]) + params)
    head = HEADER + bytes([dxl_id]) + struct.pack("<H", len(body) + 2) + body
    return head + struct.pack("<H", crc16(head))


class _Servo:
    def __init__(self, dxl_id: int):
        self.table = {a: v for a, (_, _, v) in CONTROL_TABLE.items()}
        self.table[7] = dxl_id
        self.silent = False
        self.corrupt = 0

    @property
    def id(self) -> int:
        return self.table[7]

    def read(self, addr: int, length: int) -> bytes | None:
        """Bytes at [addr, addr + length) of the control table; None when any byte is not emulated."""
        out, a = b"", addr
        while a < addr + length:
            if a not in CONTROL_TABLE:
                return None
            size = CONTROL_TABLE[a][0]
            out += int(self.table[a]).to_bytes(size, "little", signed=a in (128, 132, 116))
            a += size
        return out if a == addr + length else None

    def write(self, addr: int, data: bytes) -> int:
        """0 or the error byte."""
        if addr not in CONTROL_TABLE:
            return ERR_ACCESS
        size, writable, _ = CONTROL_TABLE[addr]
        if not writable:
            return ERR_ACCESS
        if len(data) != size:
            return ERR_DATA_LENGTH
        if addr < EEPROM_END and self.table[64]:
            return ERR_ACCESS  # the EEPROM area is locked while the torque is on
        self.table[addr] = int.from_bytes(data, "little", signed=addr == 116)
        return 0


class DynamixelBusStandin:
    """Servos ``ids`` on one bus behind a pseudo-terminal (see the module docstring).

    Attributes:
        port: the pseudo-terminal's path, for ``PortHandler``.
        log: (id, instruction) of every packet the servos received, for tests.

    Args:
        ids: the servos on the bus.
        baudrate: the bus's, bit/s (the client's setting is not checked: a pty has none).
    """

    def __init__(self, ids=(1, 2, 3, 4, 5, 6, 7), baudrate: int = 1_000_000):
        self.servos = {i: _Servo(i) for i in ids}
        self.baudrate = int(baudrate)
        self.log: list[tuple[int, int]] = []
        self._lock = threading.Lock()
        self._master, slave = os.openpty()
        tty.setraw(slave)
        self.port = os.ttyname(slave)
        self._slave = slave  # kept open so the pty lives while clients come and go
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> DynamixelBusStandin:
        self._thread = threading.Thread(target=self._serve, name="dynamixel-standin", daemon=True)
        self._thread.start()
        return self

    # -- the servos -----------------------------------------------------------------------------
    def set_position(self, dxl_id: int, ticks: int) -> None:
        """Where a servo's horn is (the hand moved the leader arm), ticks (4096 a turn)."""
        with self._lock:
            self.servos[dxl_id].table[132] = int(ticks)

    def register(self, dxl_id: int, addr: int) -> int:
        with self._lock:
            return self.servos[dxl_id].table[addr]

    def silence(self, dxl_id: int, silent: bool = True) -> None:
        with self._lock:
            self.servos[dxl_id].silent = silent

    def corrupt_next(self, dxl_id: int, n: int = 1) -> None:
        with self._lock:
            self.servos[dxl_id].corrupt = n

    def unplug(self) -> None:
        """The U2D2 is pulled out: the bus (the pseudo-terminal) closes."""
        self.close()

    def close(self) -> None:
        self._stop.set()
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    # -- the bus ------------------------------------------------------------------------------------
    def _serve(self) -> None:
        import select

        buf = b""
        while not self._stop.is_set():
            try:
                if not select.select([self._master], [], [], 0.05)[0]:
                    continue
                buf += os.read(self._master, 4096)
            except OSError:
                return
            while True:
                start = buf.find(HEADER)
                if start < 0:
                    buf = buf[-3:]
                    break
                buf = buf[start:]
                if len(buf) < 7:
                    break
                n = struct.unpack_from("<H", buf, 5)[0]
                if len(buf) < 7 + n:
                    break
                pkt, buf = buf[:7 + n], buf[7 + n:]
                with self._lock:
                    self._handle(pkt)

    def _wire(self, n_bytes: int) -> None:
        """The bytes' time on the wire at the bus's baud rate (10 bits a byte)."""
        time.sleep(n_bytes * 10.0 / self.baudrate)

    def _answer(self, servo: _Servo, error: int, params: bytes = b"") -> None:
        if servo.silent:
            return
        out = packet(servo.id, STATUS, bytes([error]) + params)
        time.sleep(servo.table[9] * 2e-6)  # the servo's return delay time (2 us units)
        self._wire(len(out))
        if servo.corrupt:
            servo.corrupt -= 1
            out = out[:-2] + bytes([out[-2] ^ 0xFF, out[-1]])
        try:
            os.write(self._master, out)
        except OSError:
            pass

    def _handle(self, pkt: bytes) -> None:
        dxl_id, inst = pkt[4], pkt[7]
        params = unstuff(pkt[8:-2])
        self._wire(len(pkt))
        self.log.append((dxl_id, inst))
        crc_ok = crc16(pkt[:-2]) == struct.unpack_from("<H", pkt, len(pkt) - 2)[0]
        if not crc_ok:
            if dxl_id in self.servos:
                self._answer(self.servos[dxl_id], ERR_CRC)
            return
        if inst == PING:
            targets = sorted(self.servos) if dxl_id == BROADCAST else [dxl_id] if dxl_id in self.servos else []
            for i in targets:
                s = self.servos[i]
                self._answer(s, 0, struct.pack("<HB", s.table[0], s.table[6]))
        elif inst == SYNC_READ and dxl_id == BROADCAST and len(params) >= 4:
            addr, length = struct.unpack_from("<HH", params)
            for i in params[4:]:
                if i in self.servos:
                    s = self.servos[i]
                    data = s.read(addr, length)
                    self._answer(s, ERR_ACCESS if data is None else 0, data or b"")
        elif inst == SYNC_WRITE and dxl_id == BROADCAST and len(params) >= 4:
            addr, length = struct.unpack_from("<HH", params)
            rows = params[4:]
            for k in range(0, len(rows) - length, length + 1):
                if rows[k] in self.servos:
                    self.servos[rows[k]].write(addr, rows[k + 1:k + 1 + length])
        elif dxl_id in self.servos:
            s = self.servos[dxl_id]
            if inst == READ and len(params) == 4:
                addr, length = struct.unpack_from("<HH", params)
                data = s.read(addr, length)
                self._answer(s, ERR_ACCESS if data is None else 0, data or b"")
            elif inst == WRITE and len(params) >= 3:
                self._answer(s, s.write(struct.unpack_from("<H", params)[0], params[2:]))
            else:  # reboot, factory reset, bulk read / write, fast sync read ...: not emulated
                self._answer(s, ERR_INSTRUCTION)
