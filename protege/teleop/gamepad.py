"""A gamepad (Xbox, PlayStation, Logitech F310, ...) as a velocity teleop device (``teleop=gamepad``),
read through pygame's joystick events (SDL's gamepad drivers) in its own thread.

Each of the six TCP axes is an expression of the pad's inputs, summed: ``a3`` is axis 3 (-1..1),
``-a1`` its negative, ``t5`` axis 5 read as a trigger (-1 released .. 1 pressed, mapped to 0..1),
``b4`` button 4 (0 or 1). The defaults follow SDL's layout of an Xbox pad on Linux: left stick
moves in x / y, the triggers up (right) and down (left), the right stick tilts (rx, ry), X / Y
turn about z. The left bumper is the dead-man button: the arm moves only while it is held.
A toggles the gripper, B keeps the episode; the terminal's k / x / Q keep, discard and quit.
An unplugged pad stops the arm (pygame's device-removed event).
"""

from __future__ import annotations

import os
import re
import threading

import numpy as np

from .velocity import AXES, DeviceReader, TeleopDeviceLost, VelocityMapping, VelocityTeleop

DEFAULT_AXES = {"x": "a0", "y": "-a1", "z": "t5-t2", "rx": "-a4", "ry": "a3", "rz": "b3-b2"}
_TERM = re.compile(r"([+-]?)([abt])(\d+)")


def parse_axis(expr: str) -> list[tuple[float, str, int]]:
    """``"t5-t2"`` -> [(1, "t", 5), (-1, "t", 2)].

    Raises:
        ValueError: anything but a sum of ``[+-](a|t|b)<index>`` terms.
    """
    s = str(expr).replace(" ", "")
    terms, pos = [], 0
    while pos < len(s):
        m = _TERM.match(s, pos)
        if not m:
            raise ValueError(f"gamepad axis {expr!r}: expected terms like a0, -a1, t5, b4 (axis, trigger, button)")
        terms.append((-1.0 if m.group(1) == "-" else 1.0, m.group(2), int(m.group(3))))
        pos = m.end()
    return terms


class GamepadReader(DeviceReader):
    """pygame's joystick events -> the six deflections and the buttons.

    Args:
        axes: TCP axis -> expression (see the module docstring); missing axes stay still.
        index: which pad (pygame's device index).
        require_attached: refuse to start without a pad (False only for tests that post events).
    """

    def __init__(self, axes: dict[str, str] | None = None, index: int = 0, require_attached: bool = True):
        super().__init__("gamepad")
        exprs = {**DEFAULT_AXES, **(axes or {})}
        unknown = set(exprs) - set(AXES)
        if unknown:
            raise ValueError(f"gamepad axes names unknown TCP axes {sorted(unknown)}; they are {list(AXES)}")
        self.terms = [parse_axis(exprs[a]) if exprs.get(a) else [] for a in AXES]
        self.index, self.require_attached = index, require_attached
        self.raw_axes: dict[int, float] = {}
        self.raw_buttons: dict[int, bool] = {}
        self.instance_id: int | None = None
        self._ready = threading.Event()
        self._open_error: Exception | None = None

    def value(self) -> np.ndarray:
        """The six deflections from the pad's current inputs, each clipped to [-1, 1]."""
        out = np.zeros(6)
        for i, terms in enumerate(self.terms):
            for sign, kind, idx in terms:
                if kind == "b":
                    v = float(self.raw_buttons.get(idx, False))
                else:
                    v = self.raw_axes.get(idx, -1.0 if kind == "t" else 0.0)
                    v = (v + 1.0) / 2.0 if kind == "t" else v
                out[i] += sign * v
        return np.clip(out, -1.0, 1.0)

    def open(self) -> None:
        # pygame's event queue lives in the thread that initialised it: the reader's
        self._thread = threading.Thread(target=self._run_guarded, name="teleop-gamepad", daemon=True)
        self._thread.start()
        self._ready.wait(10.0)
        if self._open_error is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
            raise self._open_error

    def start(self) -> None:
        if self._thread is None:
            self.open()

    def handle(self, ev) -> None:
        """One pygame event (the reader thread's; tests call it with events they make)."""
        import pygame

        iid = getattr(ev, "instance_id", None)
        if ev.type == pygame.JOYDEVICEADDED and self.instance_id is None and not self.require_attached:
            self.instance_id = iid
        elif ev.type == pygame.JOYDEVICEREMOVED and iid == self.instance_id:
            self._lost("the gamepad was unplugged")
        elif iid is not None and iid == self.instance_id:
            if ev.type == pygame.JOYAXISMOTION:
                self.raw_axes[ev.axis] = float(ev.value)
                self._motion(self.value())
            elif ev.type in (pygame.JOYBUTTONDOWN, pygame.JOYBUTTONUP):
                self.raw_buttons[ev.button] = ev.type == pygame.JOYBUTTONDOWN
                self._button(ev.button, ev.type == pygame.JOYBUTTONDOWN)
                self._motion(self.value())

    def run(self) -> None:
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # no window: the pad's events only
        os.environ.setdefault("SDL_JOYSTICK_ALLOW_BACKGROUND_EVENTS", "1")
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        try:
            import pygame

            pygame.display.init()
            pygame.joystick.init()
            if self.require_attached:
                if pygame.joystick.get_count() <= self.index:
                    raise TeleopDeviceLost(f"gamepad: no gamepad {self.index} found ({pygame.joystick.get_count()} "
                                           "attached; plugged in? readable? see README 'Collecting demonstrations')")
                pad = pygame.joystick.Joystick(self.index)
                self.instance_id = pad.get_instance_id()
                self.name = f"gamepad ({pad.get_name()})"
        except Exception as e:  # noqa: BLE001 - raised by open() in the caller's thread
            self._open_error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                ev = pygame.event.wait(50)
                if ev.type != pygame.NOEVENT:
                    self.handle(ev)
        finally:
            pygame.joystick.quit()
            pygame.display.quit()

    def post(self, **event) -> None:
        """Put an event into pygame's queue, as SDL does for a pad (for tests and demos)."""
        import pygame

        kind = event.pop("type")
        pygame.event.post(pygame.event.Event(kind, **event))


def Gamepad(axes: dict[str, str] | None = None, index: int = 0, mapping: dict | VelocityMapping | None = None,
            fps: float = 10.0, deadman_button: int | None = 4, gripper_button: int | None = 0,
            keep_button: int | None = 1, **kwargs) -> VelocityTeleop:
    """``teleop=gamepad``: a :class:`~protege.teleop.velocity.VelocityTeleop` on a pygame pad (see the
    module docstring for the default buttons).

    Raises:
        ValueError: a bad axis expression or mapping (before the pad is opened).
    """
    return VelocityTeleop(GamepadReader(axes, index, kwargs.pop("require_attached", True)), mapping, fps=fps,
                          deadman_button=deadman_button, gripper_button=gripper_button, keep_button=keep_button, **kwargs)
