"""The RealSense driver through the real pyrealsense2 library, against rs.software_device: three
cameras at 30 fps, host timestamps, no dropped frame, clear errors."""

import threading
import time

import numpy as np
import pytest

rs = pytest.importorskip("pyrealsense2", exc_type=ImportError)  # needs the system's libusb-1.0-0

from protege.robot.frames import ThreadedCamera  # noqa: E402
from protege.robot.interfaces import DeviceError  # noqa: E402
from protege.robot.realsense import RealSenseSource  # noqa: E402

W, H, FPS = 160, 120, 30


class SoftwareCamera:
    """A software RealSense device whose colour sensor a thread feeds at FPS; frame i holds value i."""

    def __init__(self, serial):
        self.dev = rs.software_device()
        self.dev.register_info(rs.camera_info.serial_number, serial)
        self.sensor = self.dev.add_sensor("RGB Camera")
        intr = rs.intrinsics()
        intr.width, intr.height, intr.ppx, intr.ppy, intr.fx, intr.fy = W, H, W / 2, H / 2, 100.0, 100.0
        intr.model, intr.coeffs = rs.distortion.none, [0.0] * 5
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid, vs.width, vs.height, vs.fps, vs.bpp = rs.stream.color, 0, 0, W, H, FPS, 3
        vs.fmt, vs.intrinsics = rs.format.rgb8, intr
        self.profile = self.sensor.add_video_stream(vs).as_video_stream_profile()
        self.pushed = []  # (frame number, monotonic time of the push)

    def run(self, n, started):
        started.wait()
        t0 = time.monotonic()
        for i in range(n):
            time.sleep(max(0.0, t0 + i / FPS - time.monotonic()))
            f = rs.software_video_frame()
            f.pixels = np.full((H, W, 3), i % 256, np.uint8)
            f.stride, f.bpp = W * 3, 3
            f.timestamp, f.domain = time.time() * 1000.0, rs.timestamp_domain.global_time
            f.frame_number, f.profile = i, self.profile
            self.pushed.append((i, time.monotonic()))
            self.sensor.on_video_frame(f)


def test_three_cameras_at_30_fps_with_host_timestamps_and_no_dropped_frame():
    n = 45
    sw = [SoftwareCamera(f"SW{i}") for i in range(3)]
    cams = [ThreadedCamera(RealSenseSource(f"SW{i}", W, H, FPS, device=s.dev), f"cam{i}", capacity=64)
            for i, s in enumerate(sw)]
    time.sleep(0.3)  # the reader threads open their sensors
    go = threading.Event()
    pushers = [threading.Thread(target=s.run, args=(n, go)) for s in sw]
    for p in pushers:
        p.start()
    go.set()
    for p in pushers:
        p.join()
    time.sleep(0.2)
    try:
        for s, cam in zip(sw, cams):
            frames = cam.frames(64)
            assert [f.frame_index for f in frames] == list(range(n))  # every frame, in order
            for f, (i, t_push) in zip(frames, s.pushed):
                assert f.rgb.shape == (H, W, 3) and f.rgb.dtype == np.uint8 and f.rgb[0, 0, 0] == i
                assert abs(f.timestamp - t_push) < 0.005  # on the host's monotonic clock, within 5 ms
            periods = np.diff([f.timestamp for f in frames])
            assert np.median(periods) == pytest.approx(1 / FPS, abs=0.003)
        assert cams[0].source.intrinsics["fx"] == 100.0 and cams[0].source.intrinsics["width"] == W
    finally:
        for c in cams:
            c.close()


def test_a_missing_profile_and_a_silent_camera_are_clear_errors():
    sw = SoftwareCamera("SW9")
    cam = ThreadedCamera(RealSenseSource("SW9", 640, 480, 30, device=sw.dev), "wrong", first_frame_timeout_s=2.0)
    with pytest.raises(DeviceError, match=r"no RGB8 profile 640x480@30; it has \['160x120@30"):
        cam.read()
    cam.close()
    sw = SoftwareCamera("SW8")
    cam = ThreadedCamera(RealSenseSource("SW8", W, H, FPS, device=sw.dev, timeout_s=0.3), "silent",
                         first_frame_timeout_s=2.0)
    with pytest.raises(DeviceError, match="no frame in 0.3 s"):
        cam.read()
    cam.close()
