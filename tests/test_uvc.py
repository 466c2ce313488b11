"""The UVC driver through the real OpenCV library, on a video file played in real time."""

import time

import cv2
import numpy as np
import pytest

from protege.robot.interfaces import DeviceError
from protege.robot.uvc import OpenCVSource, opencv_camera


def _video(path, n=20, fps=30.0):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    for i in range(n):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:, :, 2] = 10 * i  # red in OpenCV's BGR
        w.write(frame)
    w.release()
    return path


def test_a_video_file_plays_as_a_camera_in_rgb_with_host_timestamps(tmp_path):
    path = _video(tmp_path / "cam.avi")
    t0 = time.monotonic()
    cam = opencv_camera("file", device=str(path), latency_s=0.01)
    time.sleep(0.9)  # 20 frames at 30 fps, then the file ends
    frames = cam.ring.last(64)  # what the reader thread delivered before the end
    assert [f.frame_index for f in frames] == list(range(20))
    assert all(f.rgb.shape == (48, 64, 3) and f.rgb.dtype == np.uint8 for f in frames)
    assert abs(int(frames[5].rgb[0, 0, 0]) - 50) <= 3 and frames[5].rgb[0, 0, 2] <= 3  # RGB order (MJPG is lossy)
    stamps = np.array([f.timestamp for f in frames])
    assert t0 - 0.01 <= stamps[0] and np.median(np.diff(stamps)) == pytest.approx(1 / 30, abs=0.005)
    with pytest.raises(DeviceError, match="end of the file"):
        cam.read()
    cam.close()


def test_a_missing_camera_is_a_clear_error(tmp_path):
    cam = opencv_camera("nope", device=str(tmp_path / "missing.avi"))
    with pytest.raises(DeviceError, match="cannot open"):
        cam.read()
    cam.close()
    assert not OpenCVSource("/dev/video99").is_file
