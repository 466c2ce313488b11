"""What the control loop and the recorders run on: the :class:`Backend` protocol, and the hardware
backend, a real arm, its gripper and cameras, built from the ``robot=``, ``gripper=`` and
``camera=`` configs (``robot=ur5e gripper=robotiq_2f85 camera=realsense``).

:class:`HardwareBackend` is a :class:`Backend` and nothing a real lab does not have: no seeded
reset and no success check (the operator resets the scene and judges).
:class:`~protege.sim.env.SimBackend` is also an :class:`EpisodicBackend`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import hydra

from protege.robot.clock import Clock, HostClock
from protege.robot.interfaces import Camera, Gripper, Robot


@runtime_checkable
class Backend(Protocol):
    """A robot, its gripper (or None) and named cameras on one clock.

    Attributes:
        robot, gripper, cameras: the devices (name -> :class:`~protege.robot.interfaces.Camera`).
        clock: the clock every sample and target is stamped on.
        time_limit_s: an episode's default length, s.
    """

    robot: Robot
    gripper: Gripper | None
    cameras: Mapping[str, Camera]
    clock: Clock
    time_limit_s: float

    def close(self) -> None:
        """Stop and close every device (idempotent)."""


@runtime_checkable
class EpisodicBackend(Backend, Protocol):
    """A backend that can start an episode from a seed and judge it (the simulator)."""

    def reset(self, seed: int) -> float:
        """Start the episode of ``seed``; returns its start time on :attr:`clock`."""

    def status(self) -> Any:
        """The task's status now (``success``, ``reward``, ``done``), once per cycle."""


def camera_info(cameras: Mapping[str, Camera]) -> dict[str, dict]:
    """{name: camera.info()} (driver, serial, size, fps, intrinsics), stored with each episode."""
    return {name: cam.info() for name, cam in cameras.items()}


class HardwareBackend:
    """Devices opened one by one; if any fails, those already open are closed and the error raised.

    Args:
        robot: a config with ``_target_`` building the :class:`~protege.robot.interfaces.Robot`.
        gripper: the same for the :class:`~protege.robot.interfaces.Gripper`, or None (no gripper).
        cameras: name -> config with ``_target_`` building each :class:`~protege.robot.interfaces.Camera`.
        image_size: passed to every camera factory (frames are resized to the policy's size).
        time_limit_s: an episode's default length, s.

    Raises:
        DeviceError: a device is missing or refuses (its own message says which and why).
        ImportError: a driver's library is not installed.
    """

    def __init__(self, robot: Mapping[str, Any], gripper: Mapping[str, Any] | None = None,
                 cameras: Mapping[str, Mapping[str, Any]] | None = None, image_size: int | None = None,
                 time_limit_s: float = 60.0):
        self.robot: Robot | None = None
        self.gripper: Gripper | None = None
        self.cameras: dict[str, Camera] = {}
        self.clock = HostClock()
        self.time_limit_s = float(time_limit_s)
        try:
            self.robot = hydra.utils.instantiate(robot, _convert_="all")
            if gripper:
                self.gripper = hydra.utils.instantiate(gripper, _convert_="all")
            for name, cfg in (cameras or {}).items():
                extra = {"image_size": image_size} if image_size else {}
                self.cameras[name] = hydra.utils.instantiate(cfg, name=name, _convert_="all", **extra)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close every device (the arm last, after its stop). Idempotent."""
        for cam in self.cameras.values():
            cam.close()
        if self.gripper is not None:
            self.gripper.close()
        if self.robot is not None:
            self.robot.close()
