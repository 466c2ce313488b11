"""UVC (USB video class) cameras, or video files, through OpenCV.

:class:`OpenCVSource` is a :class:`~protege.robot.frames.FrameSource` for a
:class:`~protege.robot.frames.ThreadedCamera`: one reader thread per camera, frames in a ring
buffer, host timestamps. A camera is named by index (``/dev/video<index>``) or path; a video file
plays at its own frame rate (a stand-in for a camera in tests and rehearsals).

Timestamps: UVC through OpenCV gives no reliable exposure time, so a frame is stamped with its
arrival on the host's ``time.monotonic()`` minus ``latency_s`` (measure it once per camera model:
the delay from exposure to arrival). The frame index counts the frames read since open.
"""

from __future__ import annotations

import os
import time

import cv2

from .frames import ResizedSource, ThreadedCamera
from .interfaces import DeviceError, Frame


class OpenCVSource:
    """Frames from ``cv2.VideoCapture`` (RGB, host timestamps).

    Args:
        device: a camera index (int) or a device / file path (str).
        width, height, fps: asked of a camera (a camera may refuse: :meth:`open` checks what it
            got and raises); None keeps the camera's own. Ignored for files, which play at their fps.
        latency_s: exposure-to-arrival delay subtracted from the arrival time, s.

    Raises (from :meth:`open` or :meth:`grab`, on the reader thread, then from the camera's ``read``):
        DeviceError: the camera cannot be opened, refuses the asked size or rate, stops
            delivering, or the file has ended.
    """

    def __init__(self, device: int | str = 0, width: int | None = None, height: int | None = None,
                 fps: float | None = None, latency_s: float = 0.0):
        self.device, self.width, self.height, self.fps = device, width, height, fps
        self.latency_s = float(latency_s)
        self.cap: cv2.VideoCapture | None = None
        self.index = -1

    @property
    def is_file(self) -> bool:
        return isinstance(self.device, str) and os.path.isfile(self.device)

    def open(self) -> None:
        self.cap = cv2.VideoCapture(self.device)
        if not self.cap.isOpened():
            raise DeviceError(f"OpenCV cannot open camera {self.device!r}")
        if self.is_file:
            self.period = 1.0 / (self.cap.get(cv2.CAP_PROP_FPS) or 30.0)
            self.next_t = time.monotonic()
            return
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, self.width), (cv2.CAP_PROP_FRAME_HEIGHT, self.height),
                            (cv2.CAP_PROP_FPS, self.fps)):
            if value is not None:
                self.cap.set(prop, value)
        got = (int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        if (self.width and got[0] != self.width) or (self.height and got[1] != self.height):
            raise DeviceError(f"camera {self.device!r} gives {got[0]}x{got[1]}, not the {self.width}x{self.height} asked for")

    def info(self) -> dict:
        """driver, device, and the width, height and fps the camera (or file) actually gives."""
        out = {"driver": "opencv", "device": str(self.device)}
        if self.cap is not None:
            out.update(width=int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), height=int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                       fps=float(self.cap.get(cv2.CAP_PROP_FPS)))
        return out

    def grab(self) -> Frame:
        if self.is_file:  # a file plays in real time, like a camera
            time.sleep(max(0.0, self.next_t - time.monotonic()))
            self.next_t += self.period
        ok, bgr = self.cap.read()
        arrival = time.monotonic()
        if not ok:
            raise DeviceError(f"camera {self.device!r} " + ("reached the end of the file" if self.is_file
                                                             else "stopped delivering frames"))
        self.index += 1
        return Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), arrival - self.latency_s, self.index)

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


def opencv_camera(name: str, image_size: int | None = None, **kwargs) -> ThreadedCamera:
    """A UVC camera (or video file) read by its own thread (``kwargs``: :class:`OpenCVSource`'s),
    its frames centre-cropped and resized to ``image_size`` px square when given."""
    source = OpenCVSource(**kwargs)
    return ThreadedCamera(ResizedSource(source, image_size, image_size) if image_size else source, name, capacity=64)
