"""Offscreen rendering of the scene's cameras through EGL or OSMesa (Mesa's llvmpipe on a CPU)."""

from __future__ import annotations

import ctypes.util
import importlib
import os

import mujoco
import numpy as np


def gl_backend() -> str:
    """The offscreen OpenGL backend: ``$MUJOCO_GL`` (or ``$PYOPENGL_PLATFORM``) if it names egl or
    osmesa, else EGL if libEGL is installed, else OSMesa. (Once PyOpenGL is loaded for one of them,
    the process cannot switch to the other.)

    EGL needs the Debian packages libegl1, libegl-mesa0, libgl1-mesa-dri and libopengl0; OSMesa
    needs libosmesa6. Both render on the CPU with Mesa's llvmpipe when there is no GPU.

    Raises:
        RuntimeError: neither library is installed.
    """
    for var in ("MUJOCO_GL", "PYOPENGL_PLATFORM"):
        name = os.environ.get(var, "").lower()
        if name in ("egl", "osmesa"):
            return name
    for name, lib in (("egl", "EGL"), ("osmesa", "OSMesa")):
        if ctypes.util.find_library(lib):
            return name
    raise RuntimeError("no offscreen OpenGL: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0 "
                       "(EGL) or libosmesa6 (OSMesa)")


class OffscreenRenderer:
    """Renders the scene's cameras into (H, W, 3) uint8 RGB arrays, one GL context for all cameras.

    Args:
        model: the compiled scene; its ``vis.global_.offwidth/offheight`` must be >= width/height.
        height, width: frame size in px.
        backend: ``"egl"`` or ``"osmesa"``; default :func:`gl_backend`.

    Raises:
        ValueError: the frame is larger than the model's offscreen buffer.
        RuntimeError: the GL context could not be created (try ``MUJOCO_GL=osmesa``).
    """

    def __init__(self, model: mujoco.MjModel, height: int, width: int, backend: str | None = None):
        if width > model.vis.global_.offwidth or height > model.vis.global_.offheight:
            raise ValueError(f"{height}x{width} frames exceed the offscreen buffer "
                             f"{model.vis.global_.offheight}x{model.vis.global_.offwidth} (SceneSpec.image_size)")
        self.backend = backend or gl_backend()
        self.model, self.height, self.width = model, int(height), int(width)
        try:
            self._gl = importlib.import_module(f"mujoco.{self.backend}").GLContext(self.width, self.height)
            self._gl.make_current()
        except Exception as e:
            raise RuntimeError(f"cannot create a {self.backend} OpenGL context ({e}); set MUJOCO_GL=osmesa "
                               "or egl before the first render") from e
        self._con = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_50)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._con)
        self._scn = mujoco.MjvScene(model, maxgeom=2000)
        shadows = int(model.vis.quality.shadowsize > 0)  # SceneSpec.shadows
        for flag, on in ((mujoco.mjtRndFlag.mjRND_SHADOW, shadows), (mujoco.mjtRndFlag.mjRND_REFLECTION, shadows),
                         (mujoco.mjtRndFlag.mjRND_SKYBOX, 0)):
            self._scn.flags[flag] = on
        self._opt, self._pert, self._cam = mujoco.MjvOption(), mujoco.MjvPerturb(), mujoco.MjvCamera()
        self._cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._rect = mujoco.MjrRect(0, 0, self.width, self.height)
        self._rgb = np.empty((self.height, self.width, 3), np.uint8)

    def render(self, data: mujoco.MjData, camera: str | int) -> np.ndarray:
        """A fresh (H, W, 3) uint8 RGB frame of ``camera`` (name or id) for the state in ``data``.

        Raises:
            KeyError: no camera of that name.
            RuntimeError: the renderer was closed.
        """
        self.update(data, camera)
        return self.draw()

    def update(self, data: mujoco.MjData, camera: str | int) -> None:
        """Copy the geometry ``camera`` sees in ``data`` into the renderer (CPU only: the part that reads ``data``).

        Raises:
            KeyError: no camera of that name.
            RuntimeError: the renderer was closed.
        """
        if self._gl is None:
            raise RuntimeError("renderer is closed")
        self._cam.fixedcamid = camera if isinstance(camera, int) else self.model.camera(camera).id
        mujoco.mjv_updateScene(self.model, data, self._opt, self._pert, self._cam, mujoco.mjtCatBit.mjCAT_ALL, self._scn)

    def draw(self) -> np.ndarray:
        """Render what :meth:`update` captured: a fresh (H, W, 3) uint8 RGB frame (needs no ``MjData``).

        Raises:
            RuntimeError: the renderer was closed.
        """
        if self._gl is None:
            raise RuntimeError("renderer is closed")
        self._gl.make_current()
        mujoco.mjr_render(self._rect, self._scn, self._con)
        mujoco.mjr_readPixels(self._rgb, None, self._rect, self._con)
        return np.flipud(self._rgb).copy()

    def close(self) -> None:
        """Free the GL resources (idempotent)."""
        if self._gl is not None:
            self._gl.make_current()
            self._con.free()
            self._gl.free()
            self._gl = None

    def __del__(self):  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass
