"""A stand-in for the spacenavd daemon on a UNIX socket, for testing SpaceMouse clients through the
real ``libspnav`` with no device attached.

It speaks spacenavd's client protocol as the daemon does (spacenavd 1.x, ``proto_unix.c``):

- A new client is at protocol 0. The int32 ``0x7faa5500 | v`` asks for protocol v; the daemon
  answers the version it grants (at most 1) as the same int32, and a v1 client gets the event mask
  motion | button | device. Any other int32 of a v0 client is its sensitivity, a float.
- Events are 8 int32 (native byte order): ``[0 motion, x, y, z, rx, ry, rz, period ms]``,
  ``[1 press | 2 release, button, pressed, 0...]``, ``[3 device, op (0 added, 1 removed), id,
  type, usb vendor, usb product, 0, 0]``; motion values are scaled by the client's sensitivity.
  Axes in spacenavd's frame: x right, y up, z toward the user.
- Protocol v1 requests are 8 int32 ``[0x7faa0000 | request, data 0-6]``; the answer repeats the
  request with its data and the status in data[6] (0 ok, -1 refused). Strings (device name,
  path) come in 24-byte pieces, data[6] the remaining length (bit 16 set on continuations).

Emulated requests: set name, set / get sensitivity, set / get event mask, device name, path,
axes, buttons, USB id and type. Every other request (the daemon's configuration: deadzones, axis
maps, LEDs, saving its config file) is answered -1, as the daemon answers a request it cannot
serve, and logged once as not emulated: a client never believes a setting took effect.

    standin = SpacenavdStandin("/tmp/spnav.sock"); standin.start()
    SPNAV_SOCKET=/tmp/spnav.sock <client>      # libspnav heeds SPNAV_SOCKET
    standin.motion(0, 0, -200, 0, 0, 0)        # push the cap away from the user
    standin.button(0, True); standin.unplug(); standin.stop()
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import threading

log = logging.getLogger(__name__)

REQ_TAG, REQ_CHANGE_PROTO, MAX_PROTO_VER = 0x7FAA0000, 0x5500, 1
UEV_MOTION, UEV_PRESS, UEV_RELEASE, UEV_DEV = 0, 1, 2, 3
EVMASK_MOTION, EVMASK_BUTTON, EVMASK_DEV = 0x01, 0x02, 0x04
REQ_SET_NAME, REQ_SET_SENS, REQ_GET_SENS, REQ_SET_EVMASK, REQ_GET_EVMASK = 0x1000, 0x1001, 0x1002, 0x1003, 0x1004
REQ_DEV_NAME, REQ_DEV_PATH, REQ_DEV_NAXES, REQ_DEV_NBUTTONS, REQ_DEV_USBID, REQ_DEV_TYPE = range(0x2000, 0x2006)
DEV_SMCOMP = 0x215  # SpaceMouse Compact in spacenavd's device type enum
CHUNK, CONT_BIT = 24, 0x10000
_EV = struct.Struct("=8i")


class _Client:
    def __init__(self, sock: socket.socket):
        self.sock, self.proto, self.evmask, self.sens = sock, 0, EVMASK_MOTION | EVMASK_BUTTON, 1.0
        self.buf, self.name_buf, self.name = b"", b"", ""


class SpacenavdStandin:
    """The daemon on ``path`` with one device (see the module docstring).

    Args:
        path: the UNIX socket to listen on (removed first if it exists).
        device_name, device_path: what device-name / path requests answer.
        axes, buttons: the device's counts; usb_id: (vendor, product); device_type: spacenavd's enum.
    """

    def __init__(self, path: str, device_name: str = "3Dconnexion SpaceMouse Compact",
                 device_path: str = "/dev/input/event-standin", axes: int = 6, buttons: int = 2,
                 usb_id: tuple[int, int] = (0x256F, 0xC635), device_type: int = DEV_SMCOMP):
        self.path = str(path)
        self.device = dict(name=device_name, path=device_path, axes=axes, buttons=buttons, usb_id=usb_id, type=device_type)
        self.plugged = True
        self.clients: list[_Client] = []
        self.not_emulated: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self) -> SpacenavdStandin:
        if os.path.exists(self.path):
            os.unlink(self.path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(8)
        self._thread = threading.Thread(target=self._serve, name="spacenavd-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """The daemon exits: every client's socket closes, the socket file goes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        with self._lock:
            for c in self.clients:
                c.sock.close()
            self.clients = []
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if os.path.exists(self.path):
            os.unlink(self.path)

    def wait_clients(self, n: int = 1, timeout_s: float = 5.0, proto: int = 1) -> bool:
        """Wait until ``n`` clients are connected at ``proto`` (for tests)."""
        import time

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if sum(c.proto >= proto for c in self.clients) >= n:
                    return True
            time.sleep(0.01)
        return False

    # -- the device -----------------------------------------------------------------------------------
    def motion(self, x: int, y: int, z: int, rx: int, ry: int, rz: int, period_ms: int = 16) -> None:
        """The cap moved (counts, about +-350 at full deflection; spacenavd's frame)."""
        with self._lock:
            for c in self.clients:
                if c.evmask & EVMASK_MOTION:
                    vals = [int(v * c.sens) for v in (x, y, z, rx, ry, rz)]
                    self._send(c, _EV.pack(UEV_MOTION, *vals, period_ms))

    def button(self, index: int, pressed: bool) -> None:
        with self._lock:
            for c in self.clients:
                if c.evmask & EVMASK_BUTTON:
                    self._send(c, _EV.pack(UEV_PRESS if pressed else UEV_RELEASE, index, int(pressed), 0, 0, 0, 0, 0))

    def unplug(self) -> None:
        """The device is removed: v1 clients with the device mask get a device-removed event."""
        self.plugged = False
        vid, pid = self.device["usb_id"]
        with self._lock:
            for c in self.clients:
                if c.proto >= 1 and c.evmask & EVMASK_DEV:
                    self._send(c, _EV.pack(UEV_DEV, 1, 0, self.device["type"], vid, pid, 0, 0))

    # -- the protocol -----------------------------------------------------------------------------------
    def _send(self, c: _Client, data: bytes) -> None:
        try:
            c.sock.sendall(data)
        except OSError:
            pass  # the client went away; the serve loop drops it

    def _serve(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                socks = [c.sock for c in self.clients]
            ready = select.select([self._listener, *socks], [], [], 0.05)[0]
            for s in ready:
                if s is self._listener:
                    conn, _ = self._listener.accept()
                    with self._lock:
                        self.clients.append(_Client(conn))
                    continue
                c = next(c for c in self.clients if c.sock is s)
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                with self._lock:
                    if not data:
                        s.close()
                        self.clients.remove(c)
                        continue
                    c.buf += data
                    self._handle(c)

    def _handle(self, c: _Client) -> None:
        while True:
            if c.proto == 0:
                if len(c.buf) < 4:
                    return
                (msg,), c.buf = struct.unpack("=i", c.buf[:4]), c.buf[4:]
                if (msg & 0xFFFFFF00) == REQ_TAG | REQ_CHANGE_PROTO:
                    c.proto = min(msg & 0xFF, MAX_PROTO_VER)
                    self._send(c, struct.pack("=i", REQ_TAG | REQ_CHANGE_PROTO | c.proto))
                    if c.proto > 0:
                        c.evmask = EVMASK_MOTION | EVMASK_BUTTON | EVMASK_DEV
                else:
                    (sens,) = struct.unpack("=f", struct.pack("=i", msg))
                    if sens == sens and abs(sens) != float("inf"):
                        c.sens = sens
            else:
                if len(c.buf) < 32:
                    return
                req, c.buf = list(struct.unpack("=8i", c.buf[:32])), c.buf[32:]
                self._request(c, req)

    def _reply(self, c: _Client, req: list[int], status: int) -> None:
        req[7] = status
        self._send(c, struct.pack("=8i", *req))

    def _send_str(self, c: _Client, rtype: int, text: str) -> None:
        data, n, first = text.encode(), len(text.encode()), True
        while True:
            piece = data[:CHUNK].ljust(CHUNK, b"\0")
            remaining = n if first else (n | CONT_BIT)
            self._send(c, struct.pack("=i", rtype) + piece + struct.pack("=i", remaining))
            data, n, first = data[CHUNK:], n - CHUNK, False
            if n <= 0:
                return

    def _request(self, c: _Client, req: list[int]) -> None:
        kind = req[0] & 0xFFFF
        dev = self.device if self.plugged else None
        if kind == REQ_SET_NAME:  # the daemon answers nothing; the name arrives in 24-byte pieces
            remaining = req[7] & 0xFFFF
            c.name_buf = (b"" if not req[7] & CONT_BIT else c.name_buf) + struct.pack("=6i", *req[1:7])[:min(remaining, CHUNK)]
            if remaining <= CHUNK:
                c.name = c.name_buf.decode(errors="replace")
        elif kind == REQ_SET_SENS:
            (sens,) = struct.unpack("=f", struct.pack("=i", req[1]))
            ok = sens == sens and abs(sens) != float("inf")
            if ok:
                c.sens = sens
            self._reply(c, req, 0 if ok else -1)
        elif kind == REQ_GET_SENS:
            req[1] = struct.unpack("=i", struct.pack("=f", c.sens))[0]
            self._reply(c, req, 0)
        elif kind == REQ_SET_EVMASK:
            c.evmask = req[1]
            self._reply(c, req, 0)
        elif kind == REQ_GET_EVMASK:
            req[1] = c.evmask
            self._reply(c, req, 0)
        elif kind in (REQ_DEV_NAME, REQ_DEV_PATH):
            if dev is None:
                self._reply(c, req, -1)
            else:
                self._send_str(c, req[0], dev["name"] if kind == REQ_DEV_NAME else dev["path"])
        elif kind in (REQ_DEV_NAXES, REQ_DEV_NBUTTONS, REQ_DEV_TYPE):
            if dev is None:
                self._reply(c, req, -1)
            else:
                req[1] = dev[{REQ_DEV_NAXES: "axes", REQ_DEV_NBUTTONS: "buttons", REQ_DEV_TYPE: "type"}[kind]]
                self._reply(c, req, 0)
        elif kind == REQ_DEV_USBID:
            if dev is None:
                self._reply(c, req, -1)
            else:
                req[1], req[2] = dev["usb_id"]
                self._reply(c, req, 0)
        else:
            if kind not in self.not_emulated:
                self.not_emulated.add(kind)
                log.warning("spacenavd stand-in: request 0x%04x is not emulated; answered -1 (refused)", kind)
            self._reply(c, req, -1)
