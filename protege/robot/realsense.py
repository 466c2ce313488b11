"""Intel RealSense D4xx colour cameras through librealsense's sensor-level API (``pyrealsense2``).

:class:`RealSenseSource` is a :class:`~protege.robot.frames.FrameSource`: wrapped in a
:class:`~protege.robot.frames.ThreadedCamera`, each camera is read by its own thread into a ring
buffer, so the control loop never waits on USB. It opens the colour sensor of one device directly
(``sensor.open(profile)``, ``sensor.start(frame_queue)``), not through ``rs.pipeline``, so the same
code runs against ``rs.software_device``, which pushes frames through the real library in tests
(``pipeline()`` needs a physical device).

Timestamps: with global time on (the default where the sensor supports it), librealsense stamps
each frame in the host's wall-clock milliseconds, corrected for the device clock's drift; the
source converts that once, here, to the host's ``time.monotonic()`` seconds. Frames in another
time domain are stamped with their arrival time. The frame index is the device's frame counter
counted from the first frame, so a gap means a dropped frame.

``pyrealsense2`` needs the system's ``libusb-1.0-0`` (Debian: ``apt-get install libusb-1.0-0``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .frames import ResizedSource, ThreadedCamera
from .interfaces import DeviceError, Frame


def _rs():
    try:
        import pyrealsense2 as rs
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise DeviceError("RealSense cameras need pyrealsense2 (pip install pyrealsense2) and the system's "
                          f"libusb-1.0-0 (apt-get install libusb-1.0-0): {e}") from e
    return rs


def list_devices() -> list[dict[str, Any]]:
    """Connected RealSense devices: {serial, name, firmware, usb} each (empty when none)."""
    rs = _rs()
    out = []
    for dev in rs.context().query_devices():
        info = {}
        for key, field in (("serial", "serial_number"), ("name", "name"), ("firmware", "firmware_version"),
                           ("usb", "usb_type_descriptor")):
            f = getattr(rs.camera_info, field)
            info[key] = dev.get_info(f) if dev.supports(f) else None
        out.append(info)
    return out


class RealSenseSource:
    """The colour stream of one RealSense device as a frame source (RGB, host timestamps).

    Args:
        serial: the device's serial number; None takes the only connected device.
        width, height, fps: the colour profile (RGB8), px and Hz.
        timeout_s: how long a grab waits for a frame before the camera counts as lost.
        device: an ``rs.device`` to use instead of looking one up (an ``rs.software_device`` in tests).
        queue_size: frames librealsense buffers between the device and the reader thread.

    Raises (from :meth:`open`, on the reader thread, then from the camera's ``read``):
        DeviceError: no such device, more than one without a serial, no colour sensor, no such
            profile (the message lists the ones there are), or no frame within ``timeout_s``.
    """

    def __init__(self, serial: str | None = None, width: int = 640, height: int = 480, fps: int = 30,
                 timeout_s: float = 2.0, device: Any = None, queue_size: int = 16):
        self.serial, self.size, self.fps = serial, (int(width), int(height)), int(fps)
        self.timeout_s, self.device, self.queue_size = float(timeout_s), device, int(queue_size)
        self.sensor = self.queue = None
        self.intrinsics: dict[str, Any] | None = None
        self._first: int | None = None

    def _find(self, rs):
        if self.device is not None:
            return self.device
        devices = list(rs.context().query_devices())
        serials = [d.get_info(rs.camera_info.serial_number) for d in devices]
        if self.serial is None:
            if len(devices) != 1:
                raise DeviceError(f"{len(devices)} RealSense devices connected ({serials}): name one by serial")
            return devices[0]
        for d, s in zip(devices, serials):
            if s == str(self.serial):
                return d
        raise DeviceError(f"no RealSense device with serial {self.serial}; connected: {serials or 'none'}")

    def open(self) -> None:
        rs = _rs()
        dev = self._find(rs)
        sensors = [s for s in dev.query_sensors()
                   if any(p.stream_type() == rs.stream.color for p in s.get_stream_profiles())]
        if not sensors:
            raise DeviceError(f"RealSense {self.serial or ''}: no colour sensor")
        sensor = sensors[0]
        profiles = [p.as_video_stream_profile() for p in sensor.get_stream_profiles()
                    if p.stream_type() == rs.stream.color and p.is_video_stream_profile()]
        match = [p for p in profiles if (p.width(), p.height()) == self.size and p.fps() == self.fps
                 and p.format() == rs.format.rgb8]
        if not match:
            have = sorted({f"{p.width()}x{p.height()}@{p.fps()} {p.format()}" for p in profiles})
            raise DeviceError(f"RealSense {self.serial or ''}: no RGB8 profile {self.size[0]}x{self.size[1]}@{self.fps}; "
                              f"it has {have}")
        if sensor.supports(rs.option.global_time_enabled):
            sensor.set_option(rs.option.global_time_enabled, 1)
        i = match[0].get_intrinsics()
        self.intrinsics = {"width": i.width, "height": i.height, "fx": i.fx, "fy": i.fy, "ppx": i.ppx, "ppy": i.ppy,
                           "model": str(i.model), "coeffs": list(i.coeffs)}
        self.queue = rs.frame_queue(self.queue_size, keep_frames=True)
        sensor.open(match[0])
        sensor.start(self.queue)
        self.sensor, self._rs = sensor, rs
        # wall clock ms -> monotonic s, fixed once: global time is already the host's clock
        self._epoch_to_monotonic = time.monotonic() - time.time()

    def grab(self) -> Frame:
        rs = self._rs
        try:
            f = self.queue.wait_for_frame(int(self.timeout_s * 1000))
        except RuntimeError as e:
            raise DeviceError(f"RealSense {self.serial or ''}: no frame in {self.timeout_s} s ({e})") from e
        arrival = time.monotonic()
        vf = f.as_video_frame()
        rgb = np.asanyarray(vf.get_data()).reshape(vf.get_height(), vf.get_width(), 3).copy()
        if f.get_frame_timestamp_domain() in (rs.timestamp_domain.global_time, rs.timestamp_domain.system_time):
            stamp = f.get_timestamp() / 1000.0 + self._epoch_to_monotonic
        else:  # the device's own clock: the arrival time is the best the host knows
            stamp = arrival
        number = int(f.get_frame_number())
        if self._first is None:
            self._first = number
        return Frame(rgb, stamp, number - self._first)

    def close(self) -> None:
        if self.sensor is not None:
            for step in (self.sensor.stop, self.sensor.close):
                try:
                    step()
                except RuntimeError:
                    pass
            self.sensor = None


def realsense_camera(name: str, image_size: int | None = None, **kwargs) -> ThreadedCamera:
    """A RealSense colour camera read by its own thread (``kwargs``: :class:`RealSenseSource`'s),
    its frames centre-cropped and resized to ``image_size`` px square when given."""
    source = RealSenseSource(**kwargs)
    return ThreadedCamera(ResizedSource(source, image_size, image_size) if image_size else source, name, capacity=64)
