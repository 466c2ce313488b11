"""The reader-thread camera: ring buffer, errors from the device thread, first-frame timeout."""

import threading
import time

import numpy as np
import pytest

from protege.robot.frames import FrameRing, ThreadedCamera
from protege.robot.interfaces import DeviceError, Frame


def frame(i: int) -> Frame:
    return Frame(np.full((2, 2, 3), i % 256, np.uint8), float(i), i)


def test_ring_keeps_the_newest_frames_in_order():
    ring = FrameRing(3)
    assert ring.latest() is None and ring.last(2) == []
    for i in range(5):
        ring.push(frame(i))
    assert len(ring) == 3 and ring.latest().frame_index == 4
    assert [f.frame_index for f in ring.last(2)] == [3, 4]
    assert [f.frame_index for f in ring.last(10)] == [2, 3, 4]
    assert ring.wait_newer(4, timeout=0.01) is None
    threading.Timer(0.05, ring.push, args=(frame(5),)).start()
    assert ring.wait_newer(4, timeout=5.0).frame_index == 5
    with pytest.raises(ValueError):
        FrameRing(0)


class CountingSource:
    """A device delivering frames at ``fps``; fails on frame ``fail_at`` if given."""

    def __init__(self, fps=200.0, fail_at=None, delay_open=0.0):
        self.fps, self.fail_at, self.delay_open = fps, fail_at, delay_open
        self.i, self.events = -1, []
        self.threads = set()

    def open(self):
        self.threads.add(threading.current_thread().name)
        self.events.append("open")
        time.sleep(self.delay_open)

    def grab(self):
        self.threads.add(threading.current_thread().name)
        time.sleep(1.0 / self.fps)
        self.i += 1
        if self.i == self.fail_at:
            raise OSError("USB cable pulled")
        return frame(self.i)

    def close(self):
        self.threads.add(threading.current_thread().name)
        self.events.append("close")


def test_threaded_camera_serves_frames_from_its_own_thread():
    src = CountingSource()
    cam = ThreadedCamera(src, "cam0", capacity=8)
    first = cam.read()
    time.sleep(0.1)
    later = cam.read()
    assert later.frame_index > first.frame_index  # frames kept coming with nobody asking
    window = cam.frames(4)
    assert len(window) == 4 and [f.frame_index for f in window] == sorted(f.frame_index for f in window)
    cam.close()
    cam.close()  # idempotent
    assert src.events == ["open", "close"]
    assert src.threads == {"camera-cam0"}  # open, grab and close all ran on the reader thread
    with pytest.raises(DeviceError, match="closed"):
        cam.read()


def test_a_failing_device_surfaces_as_device_error_with_the_cause():
    cam = ThreadedCamera(CountingSource(fail_at=3), "cam1")
    deadline = time.monotonic() + 5.0
    with pytest.raises(DeviceError, match="USB cable pulled") as info:
        while time.monotonic() < deadline:
            cam.read()
            time.sleep(0.005)
    assert isinstance(info.value.__cause__, OSError)
    cam.close()


def test_no_first_frame_in_time_is_an_error():
    cam = ThreadedCamera(CountingSource(delay_open=1.0), "slow", first_frame_timeout_s=0.1)
    with pytest.raises(DeviceError, match="no frame"):
        cam.read()
    cam.close()
