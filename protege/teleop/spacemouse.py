"""3Dconnexion SpaceMouse: 6-DoF velocity teleop of the TCP (``teleop=spacemouse``).

Two ways to read it, chosen by ``teleop.backend``:

- ``spacenavd``: the spacenavd daemon's events through its client library ``libspnav`` (Debian's
  ``libspnav0``), called with ctypes. libspnav connects to the daemon's UNIX socket (the
  ``SPNAV_SOCKET`` environment variable, ``socket =`` in ``/etc/spnavrc``, else
  ``/var/run/spnav.sock``) and speaks its protocol v1 (8 int32 per event: motion x y z rx ry rz
  and period, button press / release, device added / removed). spacenavd reports axes in its own
  frame (x right, y up, z toward the user); we turn them into x right, y forward, z up.
- ``hid``: the device's HID reports directly through ``hidapi`` (no daemon; needs read access to
  its ``/dev/hidraw*``: see README "Collecting demonstrations"). 3Dconnexion uses two report
  layouts: the older split one (report 1: x y z, report 2: rx ry rz, each int16 little-endian;
  SpaceNavigator, SpaceMouse Compact, the wired SpaceMouse Pro) and the newer single 6-axis report
  (report 1: x y z rx ry rz; SpaceMouse Wireless, Pro Wireless, Enterprise, the universal
  receiver). Report 3 carries the buttons as a bit field. Full deflection reads about 350.

Each backend reads in its own thread (:class:`~protege.teleop.velocity.DeviceReader`), so the
control loop never waits on the device; :class:`~protege.teleop.velocity.VelocityTeleop` turns the
newest deflection into the TCP target.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
from dataclasses import dataclass

import numpy as np

from .velocity import DeviceReader, TeleopDeviceLost, VelocityMapping, VelocityTeleop

FULL_SCALE = 350.0  # counts at full deflection (3Dconnexion's devices and spacenavd alike)

# -- libspnav (spnav.h, libspnav 1.0) ------------------------------------------------------------
SPNAV_EVENT_MOTION, SPNAV_EVENT_BUTTON, SPNAV_EVENT_DEV = 1, 2, 3
SPNAV_DEV_ADD, SPNAV_DEV_RM = 0, 1
SPNAV_EVMASK_DEFAULT = 0x01 | 0x02 | 0x04  # motion, buttons, device added / removed


class _Motion(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("x", ctypes.c_int), ("y", ctypes.c_int), ("z", ctypes.c_int),
                ("rx", ctypes.c_int), ("ry", ctypes.c_int), ("rz", ctypes.c_int), ("period", ctypes.c_uint),
                ("data", ctypes.POINTER(ctypes.c_int))]


class _Button(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("press", ctypes.c_int), ("bnum", ctypes.c_int)]


class _Dev(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("op", ctypes.c_int), ("id", ctypes.c_int), ("devtype", ctypes.c_int),
                ("usbid", ctypes.c_int * 2)]


class SpnavEvent(ctypes.Union):
    """``spnav_event`` of spnav.h."""

    _fields_ = [("type", ctypes.c_int), ("motion", _Motion), ("button", _Button), ("dev", _Dev),
                ("pad", ctypes.c_int * 16)]


def load_libspnav() -> ctypes.CDLL:
    """libspnav through ctypes.

    Raises:
        TeleopDeviceLost: the library is not installed (says how to install it).
    """
    name = ctypes.util.find_library("spnav") or "libspnav.so.0"
    try:
        lib = ctypes.CDLL(name)
    except OSError as e:
        raise TeleopDeviceLost(f"spacemouse: libspnav is not installed ({e}); on Debian / Ubuntu: "
                               "sudo apt install libspnav0 spacenavd (or use teleop.backend=hid)") from e
    lib.spnav_poll_event.argtypes = [ctypes.POINTER(SpnavEvent)]
    lib.spnav_dev_name.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.spnav_client_name.argtypes = [ctypes.c_char_p]
    lib.spnav_evmask.argtypes = [ctypes.c_uint]
    return lib


class SpnavReader(DeviceReader):
    """The SpaceMouse through spacenavd and libspnav (see the module docstring).

    Args:
        socket: the daemon's socket path (sets ``SPNAV_SOCKET`` for libspnav); None: libspnav's own
            search (``SPNAV_SOCKET``, ``/etc/spnavrc``, ``/var/run/spnav.sock``).

    libspnav keeps one connection per process, so one SpnavReader at a time. Sensitivity is ours
    (``mapping.translation_scale``), never the daemon's: libspnav 1.0 (Debian 12's) sends the low
    half of a double as ``spnav_sensitivity``'s float under protocol 1, which sets it to 0 (fixed
    upstream in 2023).
    """

    def __init__(self, socket: str | None = None):
        super().__init__("spacemouse (spacenavd)")
        self.socket = socket
        self.lib: ctypes.CDLL | None = None
        self.device_name = ""

    def open(self) -> None:
        self.lib = load_libspnav()
        if self.socket:
            os.environ["SPNAV_SOCKET"] = str(self.socket)
        where = self.socket or os.environ.get("SPNAV_SOCKET") or "/var/run/spnav.sock"
        if self.lib.spnav_open() == -1:
            raise TeleopDeviceLost(f"spacemouse: no spacenavd at {where} (start it: sudo systemctl start spacenavd; "
                                   "or point teleop.socket / SPNAV_SOCKET at its socket)")
        self.lib.spnav_client_name(b"protege")
        if self.lib.spnav_protocol() >= 1:
            self.lib.spnav_evmask(SPNAV_EVMASK_DEFAULT)
            buf = ctypes.create_string_buffer(256)
            if self.lib.spnav_dev_name(buf, 256) < 0:
                self.lib.spnav_close()
                raise TeleopDeviceLost(f"spacemouse: spacenavd at {where} has no device (is the SpaceMouse plugged in?)")
            self.device_name = buf.value.decode(errors="replace")
            self.name = f"spacemouse ({self.device_name} via spacenavd)"

    def run(self) -> None:
        lib, fd = self.lib, self.lib.spnav_fd()
        ev = SpnavEvent()
        while not self._stop.is_set():
            if not select.select([fd], [], [], 0.05)[0]:
                continue
            if lib.spnav_poll_event(ctypes.byref(ev)) == 0:  # readable, yet no event: the daemon closed the socket
                self._lost("spacenavd closed the connection (the daemon stopped)")
                return
            while True:
                self._event(ev)
                if lib.spnav_poll_event(ctypes.byref(ev)) == 0:
                    break

    def _event(self, ev: SpnavEvent) -> None:
        if ev.type == SPNAV_EVENT_MOTION:
            m = ev.motion
            # spacenavd: x right, y up, z toward the user; ours: x right, y forward (away), z up
            self._motion(np.array([m.x, -m.z, m.y, m.rx, -m.rz, m.ry], float) / FULL_SCALE)
        elif ev.type == SPNAV_EVENT_BUTTON:
            self._button(ev.button.bnum, bool(ev.button.press))
        elif ev.type == SPNAV_EVENT_DEV and ev.dev.op == SPNAV_DEV_RM:
            self._lost("the SpaceMouse was unplugged (spacenavd reported it removed)")

    def close(self) -> None:
        super().close()
        if self.lib is not None:
            self.lib.spnav_close()
            self.lib = None


# -- HID reports -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class HidModel:
    """A 3Dconnexion model: its USB ids and report layout (``split`` or ``single``)."""

    name: str
    vendor_id: int
    product_id: int
    layout: str


MODELS = (
    HidModel("SpaceNavigator", 0x046D, 0xC626, "split"),
    HidModel("SpaceMouse Pro", 0x046D, 0xC62B, "split"),
    HidModel("SpaceMouse Compact", 0x256F, 0xC635, "split"),
    HidModel("SpaceMouse Wireless (cable)", 0x256F, 0xC62E, "single"),
    HidModel("SpaceMouse Wireless (receiver)", 0x256F, 0xC62F, "single"),
    HidModel("SpaceMouse Pro Wireless (cable)", 0x256F, 0xC631, "single"),
    HidModel("SpaceMouse Pro Wireless (receiver)", 0x256F, 0xC632, "single"),
    HidModel("SpaceMouse Enterprise", 0x256F, 0xC633, "single"),
    HidModel("SpaceMouse Wireless", 0x256F, 0xC63A, "single"),
    HidModel("3Dconnexion Universal Receiver", 0x256F, 0xC652, "single"),
)


class HidReportParser:
    """3Dconnexion HID input reports -> deflections and buttons (see the module docstring).

    The device's axes (x right, y toward the user, z down; rotations about them) come out as ours
    (x right, y forward, z up): y, z, ry and rz change sign.

    Args:
        layout: ``split`` (report 1: x y z, report 2: rx ry rz) or ``single`` (report 1: all six).

    Raises:
        ValueError: an unknown layout.
    """

    _SIGNS = np.array([1, -1, -1, 1, -1, -1], float)

    def __init__(self, layout: str):
        if layout not in ("split", "single"):
            raise ValueError(f"layout must be 'split' or 'single', got {layout!r}")
        self.layout = layout
        self.raw = np.zeros(6)
        self.buttons = 0

    def feed(self, report: bytes) -> tuple[np.ndarray | None, dict[int, bool]]:
        """One report (its first byte the report id) -> (the new deflections (6,) or None when the
        report carried none, {button: held} for the buttons that changed). Reports of other ids
        (LED, battery) and short reports are ignored."""
        report = bytes(report)
        rid = report[0] if report else -1
        if rid == 1 and self.layout == "single" and len(report) >= 13:
            self.raw[:] = struct.unpack_from("<6h", report, 1)
        elif rid == 1 and len(report) >= 7:
            self.raw[:3] = struct.unpack_from("<3h", report, 1)
        elif rid == 2 and self.layout == "split" and len(report) >= 7:
            self.raw[3:] = struct.unpack_from("<3h", report, 1)
        elif rid == 3 and len(report) >= 2:
            bits = int.from_bytes(report[1:], "little")
            changed = bits ^ self.buttons
            self.buttons = bits
            return None, {i: bool(bits >> i & 1) for i in range(changed.bit_length()) if changed >> i & 1}
        else:
            return None, {}
        return np.clip(self.raw * self._SIGNS / FULL_SCALE, -1.0, 1.0), {}


class HidReader(DeviceReader):
    """The SpaceMouse's HID reports through hidapi (``pip install hidapi``).

    Args:
        path: the hidraw path to open (None: the first known 3Dconnexion device found).
    """

    def __init__(self, path: str | None = None):
        super().__init__("spacemouse (hid)")
        self.path = path
        self.dev = None
        self.parser: HidReportParser | None = None

    def open(self) -> None:
        try:
            import hid
        except ImportError as e:
            raise TeleopDeviceLost("spacemouse: teleop.backend=hid needs hidapi: pip install 'protege[teleop]'") from e
        known = {(m.vendor_id, m.product_id): m for m in MODELS}
        found = [(d, known[(d["vendor_id"], d["product_id"])]) for d in hid.enumerate()
                 if (d["vendor_id"], d["product_id"]) in known
                 and (self.path is None or d["path"].decode(errors="replace") == self.path)]
        if not found:
            raise TeleopDeviceLost("spacemouse: no 3Dconnexion device found through hidapi (plugged in? readable? "
                                   "see README 'Collecting demonstrations' for the udev rule)")
        info, model = found[0]
        self.dev = hid.device()
        try:
            self.dev.open_path(info["path"])
        except OSError as e:
            raise TeleopDeviceLost(f"spacemouse: cannot open {model.name} at {info['path']!r}: {e} "
                                   "(permissions: see README 'Collecting demonstrations')") from e
        self.parser = HidReportParser(model.layout)
        self.name = f"spacemouse ({model.name} via hid)"

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                report = self.dev.read(64, 50)
            except (OSError, ValueError) as e:
                self._lost(f"the SpaceMouse stopped answering ({e}): unplugged?")
                return
            if report:
                axes, buttons = self.parser.feed(bytes(report))
                if axes is not None:
                    self._motion(axes)
                for i, held in buttons.items():
                    self._button(i, held)

    def close(self) -> None:
        super().close()
        if self.dev is not None:
            self.dev.close()
            self.dev = None


def SpaceMouse(backend: str = "spacenavd", socket: str | None = None, hid_path: str | None = None,
               mapping: dict | VelocityMapping | None = None, fps: float = 10.0, **kwargs) -> VelocityTeleop:
    """``teleop=spacemouse``: a :class:`~protege.teleop.velocity.VelocityTeleop` on the chosen backend.

    Args:
        backend: ``spacenavd`` (through libspnav) or ``hid`` (through hidapi).
        socket: spacenavd's socket (None: libspnav's search).
        hid_path: the hidraw path (None: the first 3Dconnexion device).
        mapping, fps, kwargs: see :class:`~protege.teleop.velocity.VelocityTeleop` (buttons: 0 the
            left one toggles the gripper, 1 the right one keeps the episode).

    Raises:
        ValueError: an unknown backend or a bad mapping (before any device is opened).
    """
    if backend == "spacenavd":
        reader: DeviceReader = SpnavReader(socket)
    elif backend == "hid":
        reader = HidReader(hid_path)
    else:
        raise ValueError(f"teleop.backend must be 'spacenavd' or 'hid', got {backend!r}")
    return VelocityTeleop(reader, mapping, fps=fps, **kwargs)
