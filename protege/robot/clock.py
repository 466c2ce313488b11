"""The one clock every sample and target is stamped on (DESIGN.md, "Clock and motion").

A :class:`Clock` tells the time (``now()``, s) and waits for it (``sleep_until(t)``). Hardware
and real-time simulation run on :class:`HostClock` (``time.monotonic()``); the simulator in
lockstep runs on its own clock, where ``sleep_until`` steps the simulation instead of waiting
(``protege.sim.robot.SimRobot.clock``). The control loop paces itself with whichever it is given,
so real-time pacing happens in one place.
"""

from __future__ import annotations

import abc
import time


class Clock(abc.ABC):
    """Seconds on one monotonic time line."""

    @abc.abstractmethod
    def now(self) -> float:
        """The current time, s."""

    @abc.abstractmethod
    def sleep_until(self, t: float) -> None:
        """Return at time ``t`` s (at once when ``t`` has passed)."""

    @property
    def realtime(self) -> bool:
        """Whether time passes on its own (True) or only when the caller waits (lockstep)."""
        return True


class HostClock(Clock):
    """``time.monotonic()``. ``sleep_until`` sleeps, then spins the last ``spin_s`` for precision
    (the kernel's sleep overshoots by 0.05-1 ms; off by default, as spinning costs a core)."""

    def __init__(self, spin_s: float = 0.0):
        self.spin_s = float(spin_s)

    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, t: float) -> None:
        left = t - time.monotonic()
        if left > self.spin_s:
            time.sleep(left - self.spin_s)
        while time.monotonic() < t:
            pass
