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


def _add_stream(sensor, stream, uid, fmt, bpp, fx):
    """A W x H @ FPS video stream on a software sensor: pinhole, focal ``fx`` px, centred, no distortion."""
    intr = rs.intrinsics()
    intr.width, intr.height, intr.ppx, intr.ppy, intr.fx, intr.fy = W, H, W / 2, H / 2, fx, fx
    intr.model, intr.coeffs = rs.distortion.none, [0.0] * 5
    vs = rs.video_stream()
    vs.type, vs.index, vs.uid, vs.width, vs.height, vs.fps, vs.bpp = stream, 0, uid, W, H, FPS, bpp
    vs.fmt, vs.intrinsics = fmt, intr
    return sensor.add_video_stream(vs).as_video_stream_profile()


class SoftwareCamera:
    """A software RealSense device whose colour sensor a thread feeds at FPS; frame i holds value i."""

    def __init__(self, serial):
        self.dev = rs.software_device()
        self.dev.register_info(rs.camera_info.serial_number, serial)
        self.sensor = self.dev.add_sensor("RGB Camera")
        self.profile = _add_stream(self.sensor, rs.stream.color, 0, rs.format.rgb8, 3, fx=100.0)
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


class SoftwareDepthCamera(SoftwareCamera):
    """A software D4xx: the colour sensor plus a Z16 depth sensor (1 mm units) with its own,
    wider intrinsics (fx 80 vs colour 100) and an identity depth-to-colour extrinsic."""

    def __init__(self, serial):
        super().__init__(serial)
        self.depth_sensor = self.dev.add_sensor("Stereo Module")
        self.depth_profile = _add_stream(self.depth_sensor, rs.stream.depth, 1, rs.format.z16, 2, fx=80.0)
        self.depth_sensor.add_read_only_option(rs.option.depth_units, 0.001)
        ex = rs.extrinsics()
        ex.rotation, ex.translation = [1, 0, 0, 0, 1, 0, 0, 0, 1], [0.0, 0.0, 0.0]
        self.depth_profile.register_extrinsics_to(self.profile, ex)
        self.dev.create_matcher(rs.matchers.dlr_c)
        # a step: 1.000 m left of depth column 100, 2.000 m from it on
        self.depth = np.where(np.arange(W)[None, :] < 100, 1000, 2000).astype(np.uint16).repeat(H, 0)

    def push(self, i):
        t = time.time() * 1000.0
        for sensor, profile, pixels, bpp in ((self.sensor, self.profile, np.full((H, W, 3), i % 256, np.uint8), 3),
                                             (self.depth_sensor, self.depth_profile, self.depth, 2)):
            f = rs.software_video_frame()
            f.pixels, f.stride, f.bpp = pixels, W * bpp, bpp
            f.timestamp, f.domain, f.frame_number, f.profile = t, rs.timestamp_domain.global_time, i, profile
            sensor.on_video_frame(f)


def test_depth_is_aligned_to_colour_and_assembled_in_mm_with_resized_intrinsics():
    from protege.robot.frames import ResizedSource
    from protege.robot.observation import ObservationAssembler

    sw = SoftwareDepthCamera("SWD")
    cam = ThreadedCamera(RealSenseSource("SWD", W, H, FPS, depth=True, device=sw.dev), "scene", capacity=64)
    time.sleep(0.3)
    try:
        for i in range(10):
            sw.push(i)
            time.sleep(1 / FPS)
        time.sleep(0.2)
        frames = cam.frames(64)
        assert len(frames) >= 8 and all(f.depth is not None and f.depth.shape == (H, W) for f in frames)
        assert all(f.rgb[0, 0, 0] == f.frame_index + frames[0].rgb[0, 0, 0] - frames[0].frame_index for f in frames)
        d = frames[-1].depth
        assert d.dtype == np.float32 and d[H // 2, 20] == pytest.approx(1.0) and d[H // 2, 150] == pytest.approx(2.0)
        # the depth edge at depth column 100 lands at colour column 80 + 100 / 80 * (100 - 80) = 105, not 100
        edge = int(np.argmax(d[H // 2] > 1.5))
        assert 104 <= edge <= 106, edge
        info = cam.info()
        assert info["depth_scale"] == pytest.approx(0.001) and info["depth_intrinsics"]["fx"] == 80.0
        assert info["intrinsics"]["fx"] == 100.0 and info["serial"] == "SWD"
    finally:
        cam.close()

    # resized to 60 x 60: the crop is the central 120 x 120 (x from 20), scaled by 0.5; the depth is
    # resized by nearest neighbour (no invented depths at the edge) and assembled as uint16 mm
    sw = SoftwareDepthCamera("SWE")
    cam = ThreadedCamera(ResizedSource(RealSenseSource("SWE", W, H, FPS, depth=True, device=sw.dev), 60, 60), "scene")
    time.sleep(0.3)
    try:
        for i in range(5):
            sw.push(i)
            time.sleep(1 / FPS)
        time.sleep(0.2)
        assert cam.has_depth
        f = cam.read()
        assert f.rgb.shape == (60, 60, 3) and f.depth.shape == (60, 60)
        assert set(np.unique(f.depth)) <= {np.float32(1.0), np.float32(2.0)}
        intr = cam.info()["intrinsics"]
        assert intr["fx"] == pytest.approx(50.0) and intr["width"] == 60
        assert intr["ppx"] == pytest.approx((80 - 20 + 0.5) * 0.5 - 0.5) and intr["ppy"] == pytest.approx(29.75)

        class StillArm:  # the assembler needs a robot; this test is about the camera
            def state(self):
                from protege.robot.interfaces import RobotState
                return RobotState(np.zeros(6), np.zeros(6), np.zeros(3), np.array([0, 0, 0, 1.0]), f.timestamp)

            def states(self, n):
                return [self.state()]

        asm = ObservationAssembler(StillArm(), None, {"scene": cam})
        assert "scene_depth" in asm.store_keys and asm.key_meta["scene_depth"]["unit"].startswith("mm")
        obs = asm.at(f.timestamp, ["scene_depth", "scene_rgb"])
        assert obs["scene_depth"].dtype == np.uint16 and set(np.unique(obs["scene_depth"])) == {1000, 2000}
    finally:
        cam.close()
