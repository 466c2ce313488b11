"""Recording on a live robot: a teleop device drives the arm through the real-time control loop.

On a real arm (``protege-record robot=ur5e teleop=keyboard``) there is no lockstep environment to
step: the device takes the place of the policy in :class:`~protege.control.loop.ControlLoop`, so a
demonstration passes the same safety filter, watchdogs, smooth stop and timestamped observation
assembly as a deployed policy does. Each cycle (at the task's fps) the device sees the newest
observation and returns the TCP target for the end of the cycle (a chunk of one action, computed
in the loop's own thread: :class:`~protege.control.inference.InlineWorker`); the observation at
``t_k`` and the action sent (after the safety filter) are one step of the episode.

The operator ends an episode with the device's keys (keep, discard, quit); an episode that reaches
the time limit without a key is kept only with ``keep=all`` (a real arm has no success check).
A watchdog stop (Ctrl-C, a protective stop, a stale camera) discards the open episode, says so,
and ends the session with the stop's exit code; every episode committed before it stays in the
store.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..data.writer import BackgroundWriter
from ..control.cyclelog import CycleLog
from ..control.loop import ActionSource, ControlLoop, Hooks, LoopSettings, StopReason
from ..control.safety import JointSafetyFilter, SafetyFilter, SafetyLimits
from ..control.schedulers import RecedingHorizon
from ..robot.observation import ObservationAssembler
from ..robot.backend import EpisodicBackend, camera_info
from .session import DISCARD, KEEP, QUIT, SessionReport


class TeleopActor:
    """A teleop device as the control loop's ``predict``: ``actor(window) -> (1, 10)`` chunk.

    The device is reset on the first call of each episode (:meth:`begin`) with that observation,
    and its keep / discard / quit request is remembered in :attr:`decision` (the first one wins).
    """

    def __init__(self, device):
        self.device = device
        self.decision: str | None = None
        self._seed: int | None = None
        self._fresh = False

    def begin(self, seed: int) -> None:
        self._seed, self._fresh, self.decision = seed, True, None

    def __call__(self, window: Mapping[str, np.ndarray]) -> np.ndarray:
        obs = {k: np.asarray(v)[-1] for k, v in window.items()}
        if self._fresh:
            self.device.reset(self._seed, obs, None)
            self._fresh = False
        action = np.asarray(self.device.act(obs), dtype=np.float64)
        if self.decision is None:
            self.decision = self.device.poll()
        return action[None]

    def end_requested(self) -> bool:
        return self.decision in (KEEP, DISCARD, QUIT)


class StatusLine:
    """The operator's one live line (episode, elapsed time, the device's event rate and gripper, the
    keys), redrawn in place at most ``hz`` times a second on a terminal; silent when ``stream`` is
    not a terminal (a log file gets the per-episode lines only)."""

    def __init__(self, device, stream=None, hz: float = 4.0):
        self.device, self.stream = device, stream if stream is not None else sys.stderr
        self.period, self._last, self.enabled = 1.0 / hz, -np.inf, self.stream.isatty()
        self.episode, self.t0, self._events0 = 0, time.monotonic(), None

    def begin(self, episode: int) -> None:
        self.episode, self.t0, self._events0 = episode, time.monotonic(), self._events()

    def _events(self) -> int | None:
        reader = getattr(self.device, "reader", None)
        return reader.snapshot().events if reader is not None else None

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        parts = [f"episode {self.episode}", f"{elapsed:5.1f} s"]
        if (ev := self._events()) is not None and self._events0 is not None and elapsed > 0:
            parts.append(f"{getattr(self.device, 'name', 'device')} {(ev - self._events0) / elapsed:5.1f} events/s")
        if (width := getattr(self.device, "width", None)) is not None:
            parts.append(f"gripper {width * 1000:3.0f} mm")
        if callable(status := getattr(self.device, "status", None)):
            parts.append(status())
        parts.append("keys: k keep, x discard, Q quit, Ctrl-C stop")
        return " | ".join(parts)

    def update(self) -> None:
        now = time.monotonic()
        if self.enabled and now - self._last >= self.period:
            self._last = now
            self.stream.write("\r\033[K" + self.line())
            self.stream.flush()

    def end(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


def record_live(backend, device, writer: BackgroundWriter, episodes: int, *, fps: float, safety: Mapping[str, Any],
                time_limit_s: float, task: str = "", operator: str = "", keep: str = "success",
                latency: Mapping[str, float] | None = None, max_attempts: int | None = None,
                stop_requested=lambda: False, log_path=None, max_frame_age_s: float = 0.5,
                device_name: str = "", seed: int = 0, view=None) -> SessionReport:
    """Record up to ``episodes`` demonstrations on ``backend``'s robot (see the module docstring).

    Args:
        backend: ``robot``, ``gripper``, ``cameras``, ``clock`` (a :class:`~protege.robot.backend.HardwareBackend`,
            or the simulator's real-time :class:`~protege.sim.env.SimBackend`).
        device: a teleop device (:class:`~protege.teleop.session.TeleopDevice`); it gets no task state.
        writer: the episode store's writer; each kept episode is committed with its metadata
            (task, operator, start time, success = kept by the operator's key, steps, cameras).
        fps: the control and recording rate, Hz.
        safety: the robot config's ``safety`` (:class:`~protege.control.safety.SafetyLimits`).
        time_limit_s: an episode's longest duration, s.
        keep: at the time limit with no key: ``all`` keeps the episode; ``success`` keeps it when
            the backend judges it a success (the simulator), else discards it.
        device_name: the teleop device (``spacemouse``, ...), stored with each episode.
        seed: on an episodic backend (the simulator), attempt i starts from seed + i.
        view: a :class:`~protege.control.liveview.LiveView` (``display=true``), or None.
        latency: the robot config's ``latency`` (observation assembly).
        stop_requested: the operator's stop (Ctrl-C), polled every cycle.
        log_path: the control loop's per-cycle log (JSON lines), or None.

    Returns:
        A :class:`~protege.teleop.session.SessionReport`; ``stop`` is the :class:`StopReason` of a
        watchdog that ended the session (COMPLETED when none did).
    """
    report = SessionReport(stop=StopReason.COMPLETED)
    max_attempts = max_attempts or 3 * episodes
    dt = 1.0 / fps
    assembler = ObservationAssembler(backend.robot, backend.gripper, backend.cameras, **(latency or {}))
    actor = TeleopActor(device)

    limits = SafetyLimits.from_config(safety)
    if getattr(device, "command", "tcp") == "joints":  # a leader arm: joint targets, servoJ
        safety_filter: SafetyFilter = JointSafetyFilter(limits, dt, backend.robot.forward_kinematics)
    else:
        safety_filter = SafetyFilter(limits, dt)
    status_line = StatusLine(device)
    episodic = isinstance(backend, EpisodicBackend)

    def on_step(obs, action):
        writer.add_step({**obs, "action": action.astype(np.float32)})
        status_line.update()

    loop = ControlLoop(backend.robot, backend.gripper, backend.cameras, backend.clock,
                       ActionSource(actor, assembler.store_keys, inline=True), assembler,
                       RecedingHorizon(1, dt, offset=1.0), safety_filter,
                       LoopSettings(control_hz=fps, n_obs_steps=1, max_frame_age_s=max_frame_age_s, latency_margin_s=0.0),
                       Hooks(stop_requested=stop_requested, end_requested=actor.end_requested, on_step=on_step,
                             status=backend.status if episodic else None),
                       log=CycleLog(log_path), view=view)
    cameras = camera_info(backend.cameras)
    t_session = time.monotonic()
    try:
        while len(report.kept) < episodes and report.attempts < max_attempts:
            ep_seed = seed + report.attempts
            report.attempts += 1
            actor.begin(ep_seed)
            print(f"episode {report.attempts} (kept {len(report.kept)}/{episodes}): recording", flush=True)
            start_wall = time.time()
            t_start = backend.reset(ep_seed) if episodic else backend.clock.now()
            status_line.begin(report.attempts)
            res = loop.run_episode(t_start, time_limit_s, seed=ep_seed if episodic else None)
            status_line.end()
            decision, steps = actor.decision, res.steps  # one step written per executed cycle
            if res.stop != StopReason.COMPLETED:
                writer.discard()
                report.discarded += 1
                report.stop, report.message = res.stop, res.message
                print(f"episode {report.attempts} stopped ({res.stop.name.lower()}: {res.message}): its {steps} "
                      f"steps were discarded; the {len(report.kept)} episode(s) kept before it are in the store", flush=True)
                break
            if decision is None:  # the time limit (or the task's success), no key
                decision = KEEP if keep == "all" or (episodic and res.success) else DISCARD
                why = "success" if res.success else f"time limit ({time_limit_s:g} s)"
                print(f"episode {report.attempts}: {why} with no keep/discard key: "
                      + ("kept" if decision == KEEP else "discarded (keep=all keeps these)"), flush=True)
            if decision == KEEP and steps:
                writer.commit(task=task, operator=operator, start_time=start_wall, steps=steps, source="teleop",
                              device=device_name or getattr(device, "name", type(device).__name__), cameras=cameras,
                              action_space=getattr(device, "command", "tcp"),
                              success=bool(res.success) if episodic else True,
                              **({"seed": ep_seed} if episodic else {}))
                report.kept.append(len(report.kept))
                report.steps += steps
                print(f"episode {report.attempts}: kept, {steps} steps ({steps * dt:.1f} s)", flush=True)
            else:
                writer.discard()
                report.discarded += 1
                print(f"episode {report.attempts}: discarded ({steps} steps)", flush=True)
            if decision == QUIT:
                break
    finally:
        loop.close()
    report.kept = writer.flush()
    report.seconds = time.monotonic() - t_session
    return report
