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


def _intrinsics(profile) -> dict[str, Any]:
    i = profile.get_intrinsics()
    return {"width": i.width, "height": i.height, "fx": i.fx, "fy": i.fy, "ppx": i.ppx, "ppy": i.ppy,
            "model": str(i.model), "coeffs": list(i.coeffs)}


class RealSenseSource:
    """The colour stream of one RealSense device as a frame source (RGB, host timestamps), with
    its depth stream aligned to the colour image when ``depth`` is on.

    Args:
        serial: the device's serial number; None takes the only connected device.
        width, height, fps: the colour profile (RGB8), px and Hz.
        depth: also stream depth (Z16) and align it to the colour frame (``rs.align``: each
            depth pixel deprojected with the depth intrinsics, moved by the depth-to-colour
            extrinsics and projected with the colour intrinsics), served as ``Frame.depth``
            (H, W) float32 m in the colour frame's pixels, 0 where there is no depth.
        depth_width, depth_height: the depth profile, px (default: the colour size); at ``fps``.
        timeout_s: how long a grab waits for a frame before the camera counts as lost.
        device: an ``rs.device`` to use instead of looking one up (an ``rs.software_device`` in tests).
        queue_size: frames librealsense buffers between the device and the reader thread.

    Raises (from :meth:`open`, on the reader thread, then from the camera's ``read``):
        DeviceError: no such device, more than one without a serial, no colour (or depth) sensor,
            no such profile (the message lists the ones there are), or no frame within ``timeout_s``.
    """

    def __init__(self, serial: str | None = None, width: int = 640, height: int = 480, fps: int = 30,
                 depth: bool = False, depth_width: int | None = None, depth_height: int | None = None,
                 timeout_s: float = 2.0, device: Any = None, queue_size: int = 16):
        self.serial, self.size, self.fps = serial, (int(width), int(height)), int(fps)
        self.depth = bool(depth)
        self.depth_size = (int(depth_width or width), int(depth_height or height))
        self.timeout_s, self.device, self.queue_size = float(timeout_s), device, int(queue_size)
        self.sensors: list = []
        self.queue = self.syncer = self.align = None
        self.intrinsics: dict[str, Any] | None = None
        self.depth_intrinsics: dict[str, Any] | None = None
        self.depth_scale: float | None = None
        self._first: int | None = None
        self._serial = serial

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

    def _profile(self, rs, dev, stream, fmt, size):
        """(sensor, profile) of ``stream`` at ``size`` @ fps in ``fmt``, or a DeviceError listing what there is."""
        kind = "colour" if stream == rs.stream.color else "depth"
        sensors = [s for s in dev.query_sensors() if any(p.stream_type() == stream for p in s.get_stream_profiles())]
        if not sensors:
            raise DeviceError(f"RealSense {self._serial or ''}: no {kind} sensor")
        profiles = [p.as_video_stream_profile() for p in sensors[0].get_stream_profiles()
                    if p.stream_type() == stream and p.is_video_stream_profile()]
        match = [p for p in profiles if (p.width(), p.height()) == size and p.fps() == self.fps and p.format() == fmt]
        if not match:
            have = sorted({f"{p.width()}x{p.height()}@{p.fps()} {p.format()}" for p in profiles})
            name = "RGB8" if kind == "colour" else "Z16 depth"
            raise DeviceError(f"RealSense {self._serial or ''}: no {name} profile {size[0]}x{size[1]}@{self.fps}; "
                              f"it has {have}")
        return sensors[0], match[0]

    def open(self) -> None:
        rs = _rs()
        dev = self._find(rs)
        if dev.supports(rs.camera_info.serial_number):
            self._serial = dev.get_info(rs.camera_info.serial_number)
        streams = [(rs.stream.color, rs.format.rgb8, self.size)]
        if self.depth:
            streams.append((rs.stream.depth, rs.format.z16, self.depth_size))
        opened = [self._profile(rs, dev, *s) for s in streams]  # every profile checked before any sensor starts
        self.intrinsics = _intrinsics(opened[0][1])
        if self.depth:
            depth_sensor = opened[1][0]
            if not depth_sensor.is_depth_sensor():
                raise DeviceError(f"RealSense {self._serial or ''}: its depth stream has no depth scale")
            self.depth_scale = float(depth_sensor.as_depth_sensor().get_depth_scale())
            self.depth_intrinsics = _intrinsics(opened[1][1])
            self.syncer = rs.syncer(self.queue_size)
            self.align = rs.align(rs.stream.color)
        else:
            self.queue = rs.frame_queue(self.queue_size, keep_frames=True)
        for sensor, _ in opened:
            if sensor.supports(rs.option.global_time_enabled):
                sensor.set_option(rs.option.global_time_enabled, 1)
        self._rs = rs
        for sensor, profile in opened:
            sensor.open(profile)
            self.sensors.append(sensor)
            sensor.start(self.syncer if self.depth else self.queue)
        # wall clock ms -> monotonic s, fixed once: global time is already the host's clock
        self._epoch_to_monotonic = time.monotonic() - time.time()

    def info(self) -> dict:
        """driver, serial, width, height, fps and the colour stream's intrinsics (once open); with
        depth, its scale and the depth stream's own intrinsics (the stored depth is aligned to colour)."""
        out = {"driver": "realsense", "serial": self._serial, "width": self.size[0], "height": self.size[1],
               "fps": self.fps, "intrinsics": self.intrinsics}
        if self.depth:
            out.update(depth_scale=self.depth_scale, depth_intrinsics=self.depth_intrinsics, depth_aligned_to="color")
        return out

    def _wait(self):
        """The next colour frame (and, with depth, the aligned depth frame)."""
        if not self.depth:
            try:
                return self.queue.wait_for_frame(int(self.timeout_s * 1000)), None
            except RuntimeError as e:
                raise DeviceError(f"RealSense {self._serial or ''}: no frame in {self.timeout_s} s ({e})") from e
        deadline = time.monotonic() + self.timeout_s
        while True:  # the syncer hands out a lone frame while it waits for its partner: skip those
            left = deadline - time.monotonic()
            try:
                frames = self.syncer.wait_for_frames(max(1, int(left * 1000)))
            except RuntimeError as e:
                raise DeviceError(f"RealSense {self._serial or ''}: no colour + depth frame pair in "
                                  f"{self.timeout_s} s ({e})") from e
            if frames.get_color_frame() and frames.get_depth_frame():
                aligned = self.align.process(frames)
                return aligned.get_color_frame(), aligned.get_depth_frame()
            if left <= 0:
                raise DeviceError(f"RealSense {self._serial or ''}: no colour + depth frame pair in {self.timeout_s} s")

    def grab(self) -> Frame:
        rs = self._rs
        f, d = self._wait()
        arrival = time.monotonic()
        vf = f.as_video_frame()
        rgb = np.asanyarray(vf.get_data()).reshape(vf.get_height(), vf.get_width(), 3).copy()
        depth = None
        if d is not None:
            depth = np.asanyarray(d.get_data()).astype(np.float32) * np.float32(self.depth_scale)
        if f.get_frame_timestamp_domain() in (rs.timestamp_domain.global_time, rs.timestamp_domain.system_time):
            stamp = f.get_timestamp() / 1000.0 + self._epoch_to_monotonic
        else:  # the device's own clock: the arrival time is the best the host knows
            stamp = arrival
        number = int(f.get_frame_number())
        if self._first is None:
            self._first = number
        return Frame(rgb, stamp, number - self._first, depth)

    def close(self) -> None:
        for sensor in self.sensors:
            for step in (sensor.stop, sensor.close):
                try:
                    step()
                except RuntimeError:
                    pass
        self.sensors = []


def realsense_camera(name: str, image_size: int | None = None, **kwargs) -> ThreadedCamera:
    """A RealSense colour camera read by its own thread (``kwargs``: :class:`RealSenseSource`'s),
    its frames centre-cropped and resized to ``image_size`` px square when given."""
    source = RealSenseSource(**kwargs)
    return ThreadedCamera(ResizedSource(source, image_size, image_size) if image_size else source, name, capacity=64)
