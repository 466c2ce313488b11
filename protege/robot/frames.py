"""Cameras that never block the control loop: a reader thread fills a ring buffer of frames.

A driver supplies a :class:`FrameSource` (open the device, block until the next frame, close);
:class:`ThreadedCamera` runs it in a thread of its own and serves :meth:`~ThreadedCamera.read`
(the latest frame) and :meth:`~ThreadedCamera.frames` (the last ``n``, for aligning an observation
window to its timestamps) from a :class:`FrameRing` without waiting on the device. The pattern of
Diffusion Policy's real-robot ``MultiRealSense`` / ``SharedMemoryRingBuffer``, with threads.

A source's ``open``, ``grab`` and ``close`` all run on the reader thread (OpenGL and some camera
SDKs bind their contexts to one thread). An exception in the source stops the reader and is
raised, as the cause of a :class:`~protege.robot.interfaces.DeviceError`, by the next ``read``.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

import cv2
import numpy as np

from protege.robot.history import History
from protege.robot.interfaces import Camera, DeviceError, Frame


class FrameRing(History[Frame]):
    """A thread-safe ring buffer of the latest ``capacity`` frames (oldest dropped first).

    Raises:
        ValueError: ``capacity`` < 1.
    """

    def wait_newer(self, index: int, timeout: float) -> Frame | None:
        """Block up to ``timeout`` s for a frame whose ``frame_index`` exceeds ``index``; None on timeout."""
        with self._cond:
            self._cond.wait_for(lambda: self._items and self._items[-1].frame_index > index, timeout)
            return self._items[-1] if self._items and self._items[-1].frame_index > index else None


class FrameSource(Protocol):
    """What a driver implements for :class:`ThreadedCamera`; every method runs on the reader thread."""

    def open(self) -> None:
        """Connect to the device (or create the renderer)."""

    def grab(self) -> Frame:
        """Block until the next frame and return it (increasing ``frame_index``, host ``timestamp``)."""

    def close(self) -> None:
        """Release the device. Called once, also after ``open`` or ``grab`` raised."""


def center_crop_resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3): the largest centred crop of the target's aspect,
    resized with area averaging (what Diffusion Policy's real-robot pipeline does to camera frames)."""
    h, w = rgb.shape[:2]
    if (h, w) == (height, width):
        return rgb
    scale = min(h / height, w / width)
    ch, cw = int(round(height * scale)), int(round(width * scale))
    y, x = (h - ch) // 2, (w - cw) // 2
    return cv2.resize(rgb[y:y + ch, x:x + cw], (width, height), interpolation=cv2.INTER_AREA)


class ResizedSource:
    """A :class:`FrameSource` whose frames are cropped and resized to the policy's ``(height, width)``
    on the reader thread (the control loop never pays for it)."""

    def __init__(self, source: FrameSource, height: int, width: int):
        self.source, self.size = source, (int(height), int(width))

    def __getattr__(self, name):  # intrinsics, serial, ... of the wrapped driver
        return getattr(self.source, name)

    def open(self) -> None:
        self.source.open()

    def grab(self) -> Frame:
        f = self.source.grab()
        depth = None if f.depth is None else center_crop_resize(f.depth, *self.size)
        return Frame(center_crop_resize(f.rgb, *self.size), f.timestamp, f.frame_index, depth)

    def close(self) -> None:
        self.source.close()


class ThreadedCamera(Camera):
    """A :class:`~protege.robot.interfaces.Camera` whose frames a reader thread grabs from ``source``.

    Args:
        source: the device's :class:`FrameSource`.
        name: for messages.
        capacity: frames kept in the ring buffer.
        first_frame_timeout_s: how long the first :meth:`read` waits for the device to deliver.

    The thread starts at construction; :meth:`close` stops and joins it.
    """

    def __init__(self, source: FrameSource, name: str = "camera", capacity: int = 32, first_frame_timeout_s: float = 5.0):
        self.source, self.name = source, name
        self.ring = FrameRing(capacity)
        self.first_frame_timeout_s = float(first_frame_timeout_s)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"camera-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.source.open()
            while not self._stop.is_set():
                self.ring.push(self.source.grab())
        except BaseException as e:  # noqa: BLE001 - handed to the reader of the frames
            self._error = e
        finally:
            try:
                self.source.close()
            except BaseException as e:  # noqa: BLE001
                self._error = self._error or e

    def _check(self) -> None:
        if self._closed:
            raise DeviceError(f"camera {self.name!r} is closed")
        if self._error is not None:
            raise DeviceError(f"camera {self.name!r} stopped: {self._error!r}") from self._error

    def read(self) -> Frame:
        """The newest frame; waits (up to ``first_frame_timeout_s``) only for the very first.

        Raises:
            DeviceError: closed, the reader thread failed (the source's exception is the cause),
                or no first frame in time.
        """
        self._check()
        frame = self.ring.latest()
        if frame is None:
            deadline = time.monotonic() + self.first_frame_timeout_s
            while frame is None and time.monotonic() < deadline and self._thread.is_alive():
                frame = self.ring.wait_newer(-1, min(0.05, max(0.0, deadline - time.monotonic())))
            self._check()
            if frame is None:
                raise DeviceError(f"camera {self.name!r} gave no frame in {self.first_frame_timeout_s:g} s")
        return frame

    def frames(self, n: int) -> list[Frame]:
        """The newest ``n`` frames (fewer at the start), oldest first, without waiting.

        Raises:
            DeviceError: as :meth:`read`.
        """
        self._check()
        return self.ring.last(n)

    def close(self) -> None:
        """Stop the reader thread and release the device (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
