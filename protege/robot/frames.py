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


def center_crop_resize(rgb: np.ndarray, height: int, width: int, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
    """(H, W, ...) -> (height, width, ...): the largest centred crop of the target's aspect, resized
    with area averaging (what Diffusion Policy's real-robot pipeline does to camera frames); depth
    takes ``cv2.INTER_NEAREST``, which never invents a depth between an edge and its background."""
    h, w = rgb.shape[:2]
    if (h, w) == (height, width):
        return rgb
    x, y, cw, ch = _crop_box(h, w, height, width)
    return cv2.resize(rgb[y:y + ch, x:x + cw], (width, height), interpolation=interpolation)


def _crop_box(h: int, w: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(x, y, cw, ch): the centred crop :func:`center_crop_resize` takes of an (h, w) frame."""
    scale = min(h / height, w / width)
    ch, cw = int(round(height * scale)), int(round(width * scale))
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def crop_resize_intrinsics(intrinsics: dict, src_size: tuple[int, int], dst_size: tuple[int, int]) -> dict:
    """Pinhole intrinsics of a frame after :func:`center_crop_resize`.

    Args:
        intrinsics: {fx, fy, ppx, ppy, ...} of the source frames, px (pixel centres at integers).
        src_size, dst_size: (height, width) of the source and resized frames, px.

    Returns:
        A copy with fx, fy scaled, the principal point moved into the crop and scaled
        (``x' = (x - x0 + 0.5) s - 0.5``), width and height set. Distortion coefficients are kept:
        they act on normalised coordinates, which a crop and a uniform resize leave unchanged.
    """
    (h, w), (height, width) = src_size, dst_size
    x0, y0, cw, ch = _crop_box(h, w, height, width)
    sx, sy = width / cw, height / ch
    out = dict(intrinsics)
    out.update(fx=intrinsics["fx"] * sx, fy=intrinsics["fy"] * sy, ppx=(intrinsics["ppx"] - x0 + 0.5) * sx - 0.5,
               ppy=(intrinsics["ppy"] - y0 + 0.5) * sy - 0.5, width=width, height=height)
    return out


class ResizedSource:
    """A :class:`FrameSource` whose frames are cropped and resized to the policy's ``(height, width)``
    on the reader thread (the control loop never pays for it)."""

    def __init__(self, source: FrameSource, height: int, width: int):
        self.source, self.size = source, (int(height), int(width))

    def __getattr__(self, name):  # intrinsics, serial, ... of the wrapped driver
        return getattr(self.source, name)

    def open(self) -> None:
        self.source.open()

    def info(self) -> dict:
        """The source's :meth:`~protege.robot.interfaces.Camera.info`, for the resized frames."""
        info = dict(getattr(self.source, "info", dict)())
        src = (info.get("height"), info.get("width"))
        if None not in src:
            info.update(height=self.size[0], width=self.size[1], source_size=[src[1], src[0]])
            if info.get("intrinsics"):
                info["intrinsics"] = crop_resize_intrinsics(info["intrinsics"], src, self.size)
        return info

    def grab(self) -> Frame:
        f = self.source.grab()
        depth = None if f.depth is None else center_crop_resize(f.depth, *self.size, cv2.INTER_NEAREST)
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

    @property
    def has_depth(self) -> bool:
        return bool(getattr(self.source, "depth", False))

    def info(self) -> dict:
        """The source's ``info()`` (known once it is open; see :meth:`~protege.robot.interfaces.Camera.info`)."""
        return dict(getattr(self.source, "info", dict)())

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
