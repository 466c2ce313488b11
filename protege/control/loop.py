"""The real-time control loop: one loop for every backend (ARCHITECTURE.md, "One control cycle").

Each cycle ``k`` at ``t_k = t_0 + k dt`` on the backend's clock:

1. watchdogs: the operator's stop, the robot's state (a lost connection or protective stop is a
   :class:`~protege.robot.interfaces.DeviceError`), the joint limits and speeds
   (:meth:`~protege.control.safety.SafetyFilter.check_state`) and every camera's newest frame
   (older than ``max_frame_age_s`` = stale);
2. the observation window: the store's keys at ``t_k - (To - 1 - i) dt``, resampled from the
   devices' histories (:class:`~protege.robot.observation.ObservationAssembler`);
3. a chunk the inference worker finished is scheduled (action i stamped
   ``t_obs + (i + offset) dt``, late ones dropped and counted); a new chunk is requested when the
   queue would run out before a chunk asked for now arrives (the *measured* latency: the slowest
   of the recent inferences, plus ``latency_margin_s``; until a few chunks have been measured
   with the arm moving, as soon as the last one arrived: see :meth:`ControlLoop.lead_s`);
4. the action stamped ``t_k + dt`` goes through the safety filter to the robot, as the target to
   reach at ``t_k + dt``. No action for it (the queue ran dry) means the policy stalled. The
   filter decides the command: a TCP target (servoL; :class:`~protege.control.safety.SafetyFilter`,
   actions (10,)) or a joint target (servoJ; :class:`~protege.control.safety.JointSafetyFilter`,
   actions (7,): a leader arm's).

Any watchdog stops the episode and the run: the arm decelerates within the safety limits, then
holds (:meth:`~protege.control.safety.SafetyFilter.stop_path`), and the reason is returned
(:class:`StopReason`, whose value is the process's exit code). A cycle log records, per cycle,
the observation time, inference start and end, actions scheduled, dropped and clipped, and the
commanded and measured TCP (:class:`CycleLog`, read by ``protege-deploy report``).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..robot.clock import Clock
from ..robot.interfaces import Camera, DeviceError, Gripper, Robot
from ..robot.observation import ObservationAssembler
from .cyclelog import CycleLog
from .inference import ActionSourceLost, InferenceResult, InferenceWorker, InlineWorker
from .safety import SafetyFilter, SafetyViolation, UnsafeAction
from .schedulers import ActionScheduler


class StopReason(enum.IntEnum):
    """Why an episode (or the run) ended; the value is ``protege-deploy``'s exit code."""

    COMPLETED = 0          # every episode ran to success or its time limit
    ERROR = 1              # an unexpected error (a traceback follows)
    START_REFUSED = 3      # the first target lay too far from the arm (start gate)
    OPERATOR = 10          # the stop key or Ctrl-C
    POLICY_STALLED = 11    # no chunk before the queue ran dry
    CAMERA_STALE = 12      # a camera gave no new frame in time, or failed
    ROBOT_FAULT = 13       # lost connection, protective stop, or a diverged simulation
    NON_FINITE_ACTION = 14  # NaN / inf or a degenerate rotation from the policy
    SAFETY_LIMIT = 15      # a joint near its limit or too fast
    TELEOP_DEVICE = 16     # the teleop device was unplugged or its driver went away


@dataclass
class LoopSettings:
    """Settings of :class:`ControlLoop` (the ``deploy`` config).

    Attributes:
        control_hz: cycle rate, Hz (the task's fps: the rate the policy was trained at).
        n_obs_steps: observation steps per window (the policy's To).
        max_frame_age_s: a camera whose newest frame is older than this is stale.
        first_chunk_timeout_s: the first inference of an episode may take this long.
        latency_margin_s: added to the measured latency when deciding to request a chunk.
        start_ramp: a first target beyond the start gate is reached slowly (True) or refused (False).
    """

    control_hz: float = 10.0
    n_obs_steps: int = 1
    max_frame_age_s: float = 0.5
    first_chunk_timeout_s: float = 30.0
    latency_margin_s: float = 0.1
    start_ramp: bool = False

    def __post_init__(self):
        if not self.control_hz > 0:
            raise ValueError(f"control_hz must be > 0, got {self.control_hz}")
        if self.n_obs_steps < 1:
            raise ValueError(f"n_obs_steps must be >= 1, got {self.n_obs_steps}")
        for name in ("max_frame_age_s", "first_chunk_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.latency_margin_s < 0:
            raise ValueError(f"latency_margin_s must be >= 0, got {self.latency_margin_s}")


@dataclass
class EpisodeResult:
    """What one episode did. ``stop`` is COMPLETED for an episode that ran to its end."""

    seed: int | None
    stop: StopReason
    message: str = ""
    steps: int = 0
    success: bool = False
    max_reward: float = 0.0
    duration_s: float = 0.0
    chunks: int = 0
    dropped: int = 0
    clips: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "stop": self.stop.name.lower()}


class _Stop(Exception):
    def __init__(self, reason: StopReason, message: str, smooth: bool = True):
        super().__init__(message)
        self.reason, self.message, self.smooth = reason, message, smooth


@dataclass
class ActionSource:
    """What gives the loop its action chunks.

    Attributes:
        predict: ``predict(window) -> chunk (Ta, Da)`` from an observation window of store keys,
            e.g. a :class:`~protege.control.inference.PolicyRunner` or a teleop device's actor.
        obs_keys: the store keys ``predict`` reads.
        inline: run ``predict`` in the loop's own thread when asked (a teleop device:
            :class:`~protege.control.inference.InlineWorker`), not in an inference thread.
        inference_delay_s: added to every inference in the thread (rehearse a slower policy).
    """

    predict: Callable[[Mapping[str, np.ndarray]], np.ndarray]
    obs_keys: Sequence[str]
    inline: bool = False
    inference_delay_s: float = 0.0


class EpisodeHooks:
    """An episode's life cycle as the loop's caller sees it, polled once per cycle. The defaults
    do nothing; :class:`Hooks` builds one from callables.

    Attributes:
        records: :meth:`on_step` wants every store key of the cycle's observation (recording), not
            only the policy's.
    """

    records = False

    def stop_requested(self) -> bool:
        """True stops the run (the operator's stop key): the arm stops smoothly, StopReason.OPERATOR."""
        return False

    def end_requested(self) -> bool:
        """True ends the episode as COMPLETED after this cycle's action (a teleop keep / discard key)."""
        return False

    def status(self) -> Any:
        """The task's status (``reward``, ``success``) or None (no task judges: a real arm)."""
        return None

    def on_step(self, obs: dict, action: np.ndarray) -> None:
        """Each executed cycle: its observation (store keys at ``t_k``) and the action sent (10,) float32."""


class Hooks(EpisodeHooks):
    """:class:`EpisodeHooks` from callables; any left None does nothing (``on_step`` given: recording)."""

    def __init__(self, stop_requested: Callable[[], bool] | None = None, end_requested: Callable[[], bool] | None = None,
                 status: Callable[[], Any] | None = None, on_step: Callable[[dict, np.ndarray], None] | None = None):
        self._stop, self._end, self._status, self._step = stop_requested, end_requested, status, on_step
        self.records = on_step is not None

    def stop_requested(self) -> bool:
        return bool(self._stop and self._stop())

    def end_requested(self) -> bool:
        return bool(self._end and self._end())

    def status(self) -> Any:
        return self._status() if self._status else None

    def on_step(self, obs: dict, action: np.ndarray) -> None:
        if self._step:
            self._step(obs, action)


class Operator:
    """A person (or a scripted stand-in) who may take over from the policy at any moment and give
    control back (HG-DAgger, Kelly et al. 2019). Polled once per cycle, in the loop's thread.

    :meth:`wants_control` says who drives this cycle; at a take-over the loop calls
    :meth:`take_over` with the target it commanded last, so the person's device starts exactly there
    (no jump); while they drive, :meth:`act` gives the target (an action (10,), through the same
    safety filter). Raising :class:`~protege.control.inference.ActionSourceLost` from either stops
    the arm (StopReason.TELEOP_DEVICE), whoever drives.
    """

    name = "operator"

    def begin(self, seed: int | None, obs: dict) -> None:
        """A new episode starts (``obs``: its first observation, store keys)."""

    def wants_control(self, obs: dict) -> bool:
        """Whether the operator drives this cycle (a toggle button, a key, a scripted rule)."""
        return False

    def take_over(self, position: np.ndarray, quat: np.ndarray, width: float, obs: dict) -> None:
        """The operator's control starts from the commanded target: TCP ``position`` (3,) m,
        ``quat`` (4,) (x, y, z, w), gripper ``width`` m."""

    def act(self, obs: dict) -> np.ndarray:
        """The operator's target for the end of this cycle, (10,) (position, 6-D rotation, width)."""
        raise NotImplementedError


class ControlLoop:
    """Runs a policy on a robot in real time (see the module docstring).

    Args:
        robot, gripper, cameras: the devices (any backend: the simulator or real drivers).
        clock: the devices' clock (``now``, ``sleep_until``).
        source: where the action chunks come from (:class:`ActionSource`: a policy, in an
            inference thread, or a teleop device, inline).
        assembler: the observation assembly over the same devices.
        scheduler: receding horizon or temporal ensembling, with the loop's ``dt``.
        safety: the robot's safety filter, with the loop's ``dt``.
        settings: :class:`LoopSettings`.
        hooks: the episode's life cycle (:class:`EpisodeHooks`: stop, end, task status, each step).
        log: the :class:`CycleLog` (None: no log).
        view: a live view (:class:`~protege.control.liveview.LiveView`): each cycle's newest
            observation frame and record go to its ``put``, which never waits (None: none).
        operator: an :class:`Operator` who may take over from the policy (None: the policy alone).
            While they drive, the policy is still asked for a chunk whenever its worker is idle,
            so a fresh one waits when control comes back; each cycle's record says who drove
            (``human``), and :meth:`EpisodeHooks.on_step` gets ``intervention`` (uint8 (1,)).

    Raises:
        ValueError: a clock that is not real time, or a scheduler / filter at another ``dt``.
    """

    def __init__(self, robot: Robot, gripper: Gripper | None, cameras: Mapping[str, Camera], clock: Clock,
                 source: ActionSource, assembler: ObservationAssembler, scheduler: ActionScheduler,
                 safety: SafetyFilter, settings: LoopSettings, hooks: EpisodeHooks | None = None,
                 log: CycleLog | None = None, view=None, operator: Operator | None = None):
        if not clock.realtime:
            raise ValueError("the control loop runs on a real-time clock (robot=sim uses clock: realtime)")
        self.robot, self.gripper, self.cameras, self.clock = robot, gripper, dict(cameras), clock
        self.assembler, self.obs_keys = assembler, list(source.obs_keys)
        self.scheduler, self.safety, self.settings = scheduler, safety, settings
        self.dt = 1.0 / settings.control_hz
        if abs(scheduler.dt - self.dt) > 1e-9 or abs(safety.dt - self.dt) > 1e-9:
            raise ValueError(f"scheduler dt {scheduler.dt} and safety dt {safety.dt} must equal 1 / control_hz = {self.dt}")
        self.worker = (InlineWorker(source.predict, clock.now) if source.inline
                       else InferenceWorker(source.predict, clock.now, source.inference_delay_s))
        self.log = log or CycleLog(None)
        self.view = view
        self.operator = operator
        self.hooks = hooks or EpisodeHooks()
        self.latencies: deque[float] = deque(maxlen=10)
        self.running_chunks = 0  # chunks whose latency was measured with the arm under way, this run
        self.episode = 0
        self._t_start = -math.inf

    # -- helpers ---------------------------------------------------------------------------------
    WARMUP_CHUNKS = 3

    def lead_s(self) -> float:
        """How early a chunk is requested, s: the slowest recent observation-to-chunk latency plus
        ``latency_margin_s``. Until ``WARMUP_CHUNKS`` chunks of this run have been measured with the
        arm under way, ``inf``: the next chunk is asked for as soon as the last one arrived. The
        only latency known before that is the episode's first chunk's, measured with the arm
        still, and inference under way (cameras rendering, the arm's state streaming) can take
        twice as long: sized on it, the queue ran dry and the loop stopped as "policy stalled"."""
        if self.running_chunks < self.WARMUP_CHUNKS:
            return math.inf
        return (max(self.latencies) if self.latencies else 0.0) + self.settings.latency_margin_s

    def _window_times(self, t: float) -> list[float]:
        n = self.settings.n_obs_steps
        return [t - (n - 1 - i) * self.dt for i in range(n)]

    def _watchdogs(self, now: float):
        if self.hooks.stop_requested():
            raise _Stop(StopReason.OPERATOR, "the operator stopped the arm")
        try:
            state = self.robot.state()
        except DeviceError as e:
            raise _Stop(StopReason.ROBOT_FAULT, f"robot: {e}", smooth=False) from e
        try:
            self.safety.check_state(state)
        except SafetyViolation as e:
            raise _Stop(StopReason.SAFETY_LIMIT, str(e)) from e
        for name, cam in self.cameras.items():
            try:
                frame = cam.read()
            except DeviceError as e:
                raise _Stop(StopReason.CAMERA_STALE, f"camera {name!r}: {e}") from e
            age = now - frame.timestamp
            if age > self.settings.max_frame_age_s:
                raise _Stop(StopReason.CAMERA_STALE, f"camera {name!r} is stale: its newest frame (#{frame.frame_index}) "
                                                     f"is {age:.2f} s old (max_frame_age_s {self.settings.max_frame_age_s})")
        return state

    def _window(self, times, keys) -> dict:
        """The assembler's observation window; a device lost while it reads (after the watchdogs
        found it alive this cycle) stops the arm as a robot fault, like a lost robot."""
        try:
            return self.assembler.window(times, keys)
        except DeviceError as e:
            raise _Stop(StopReason.ROBOT_FAULT, f"a device failed while the observation was read: {e}", smooth=False) from e

    def _schedule(self, result: InferenceResult, now: float) -> dict:
        self.latencies.append(result.latency)
        self.running_chunks += 1
        dropped = self.scheduler.add_chunk(result.chunk, result.t_obs, now)
        return {"t_obs": result.t_obs, "t_start": result.t_start, "t_end": result.t_end,
                "scheduled": int(len(result.chunk) - dropped), "dropped": dropped}

    def _poll(self) -> InferenceResult | None:
        try:
            res = self.worker.poll()
        except ActionSourceLost as e:
            raise _Stop(StopReason.TELEOP_DEVICE, str(e)) from e
        except RuntimeError as e:
            raise _Stop(StopReason.ERROR, str(e)) from e
        if res is not None and res.t_obs < self._t_start:
            return None  # a request of an earlier episode, finished late
        return res

    def _wait_for_frames(self, t_start: float, timeout_s: float = 2.0) -> None:
        """Wait until every camera shows the episode (a frame stamped at or after its start)."""
        deadline = self.clock.now() + timeout_s
        for name, cam in self.cameras.items():
            while True:
                try:
                    ts = cam.read().timestamp
                except DeviceError as e:
                    raise _Stop(StopReason.CAMERA_STALE, f"camera {name!r}: {e}") from e
                if ts >= t_start:
                    break
                if self.clock.now() > deadline:
                    raise _Stop(StopReason.CAMERA_STALE, f"camera {name!r} gave no frame of the episode in {timeout_s} s")
                self._sleep_until(self.clock.now() + 0.005)

    # -- the loop ------------------------------------------------------------------------------------
    def run_episode(self, t_start: float, time_limit_s: float, seed: int | None = None) -> EpisodeResult:
        """Run one episode from ``t_start`` (s, the clock's time of the backend's reset) for at
        most ``time_limit_s`` s (not counting a start ramp's slow move to a far first target: the
        policy's time is what the limit bounds), or until the task succeeds or a watchdog stops it.

        Returns:
            The :class:`EpisodeResult`; its ``stop`` says why it ended (COMPLETED when it ran to
            success or the time limit). The arm is at rest and holding when this returns.
        """
        self.episode += 1
        self.scheduler.reset()
        self.assembler.reset(t_start)
        clips0, chunks = self.safety.clips.copy(), 0
        result = EpisodeResult(seed=seed, stop=StopReason.COMPLETED)
        t_first = self._t_start = self.clock.now()
        try:
            self._wait_for_frames(t_start)
            state = self._watchdogs(self.clock.now())
            if not self.safety.inside(state.tcp_position):
                lim = self.safety.limits
                raise _Stop(StopReason.START_REFUSED, f"the TCP at {np.round(state.tcp_position, 3)} m is outside the "
                                                      f"workspace box {lim.workspace_min} - {lim.workspace_max}; move it in first")
            self.safety.reset_to(state)
            human, width_cmd = False, None
            if self.operator is not None:
                try:
                    self.operator.begin(seed, {key: v[-1] for key, v in self._window(self._window_times(self.clock.now()),
                                                                                      self.obs_keys_all).items()})
                except ActionSourceLost as e:
                    raise _Stop(StopReason.TELEOP_DEVICE, str(e)) from e
            t0, ramp_s = self._first_chunk()
            chunks = 1
            k = 0
            while True:
                t_k = t0 + k * self.dt
                self._sleep_until(t_k)
                wake = self.clock.now()
                if (behind := int((wake - t_k) / self.dt)) >= 1:
                    # the loop overran by whole periods: skip their cycles (their actions count as dropped)
                    k += behind
                    t_k = t0 + k * self.dt
                if wake - t_start - ramp_s > time_limit_s:
                    break
                state = self._watchdogs(wake)
                obs = self._window(self._window_times(t_k), self.obs_keys_all)
                chunk_rec, request = None, False
                if (res := self._poll()) is not None:
                    chunk_rec = self._schedule(res, self.clock.now())
                    chunks += 1
                step_obs = {key: v[-1] for key, v in obs.items()}
                was_human = human
                if self.operator is not None:
                    try:
                        human = bool(self.operator.wants_control(step_obs))
                        if human and not was_human:  # the device starts at the commanded target: no jump
                            self.operator.take_over(self.safety.position.copy(), self.safety.quat.copy(),
                                                    width_cmd if width_cmd is not None else float("nan"), step_obs)
                            self.log.write({"type": "takeover", "episode": self.episode, "k": k, "t": t_k})
                        elif was_human and not human:
                            self.log.write({"type": "handback", "episode": self.episode, "k": k, "t": t_k})
                    except ActionSourceLost as e:
                        raise _Stop(StopReason.TELEOP_DEVICE, str(e)) from e
                if self.worker.busy_since is None and (human or self.scheduler.needs_chunk(t_k, self.lead_s())):
                    # while a person drives, the policy keeps predicting from the newest observation:
                    # a fresh chunk waits for the hand-back
                    request = self.worker.submit({key: obs[key] for key in self.obs_keys}, t_k)
                    if request and chunk_rec is None and (res := self._poll()) is not None:  # done already
                        chunk_rec = self._schedule(res, self.clock.now())
                        chunks += 1
                if human:
                    try:
                        action = np.asarray(self.operator.act(step_obs), dtype=np.float64)
                    except ActionSourceLost as e:
                        raise _Stop(StopReason.TELEOP_DEVICE, str(e)) from e
                    self.scheduler.action_at(t_k + self.dt)  # the policy's action for now is passed over, not dropped
                else:
                    action = self.scheduler.action_at(t_k + self.dt)
                if action is None and isinstance(self.worker, InlineWorker):
                    # a device's action computed this cycle came too late for it (the machine stalled
                    # between the wake and the send): the arm holds its target, the next cycle asks again
                    self.log.write({"type": "late", "episode": self.episode, "k": k, "t": t_k, "wake": wake,
                                    "now": self.clock.now()})
                    k += 1
                    continue
                if action is None:
                    busy = self.worker.busy_since
                    why = (f"inference running for {wake - busy:.2f} s" if busy is not None else "no inference running")
                    lead = self.lead_s()
                    lead = "chunks asked for on arrival (warm-up)" if math.isinf(lead) else f"lead {lead:.2f} s"
                    raise _Stop(StopReason.POLICY_STALLED, f"policy stalled: no action for t = {t_k + self.dt - t_start:.2f} s "
                                                           f"of the episode ({why}; {lead})")
                try:
                    target = self.safety.filter(action)
                except UnsafeAction as e:
                    raise _Stop(StopReason.NON_FINITE_ACTION, f"the policy's action is unsafe and was not sent: {e}") from e
                try:
                    self.safety.send(self.robot, target, t_k + self.dt)
                    if self.gripper is not None:
                        self.gripper.set_width(target.width, t_k + self.dt)
                except DeviceError as e:
                    raise _Stop(StopReason.ROBOT_FAULT, f"robot: {e}", smooth=False) from e
                width_cmd = target.width
                cycle = {
                    "type": "cycle", "episode": self.episode, "k": k, "t": t_k, "wake": wake, "t_obs": t_k,
                    "request": request, "chunk": chunk_rec, "dropped": self.scheduler.dropped,
                    "clipped": list(target.clipped), "cmd": target.position, "cmd_speed": float(np.linalg.norm(self.safety.velocity)),
                    "width": target.width, "meas": state.tcp_position,
                    **({"human": human} if self.operator is not None else {}),
                }
                self.log.write(cycle)
                if self.view is not None:
                    self.view.put(t_k, {key: v[-1] for key, v in obs.items()}, cycle)
                if self.hooks.records:
                    if self.operator is not None:
                        step_obs = {**step_obs, "intervention": np.array([human], np.uint8)}
                    self.hooks.on_step(step_obs, self.safety.action_of(target))
                result.steps += 1
                if (st := self.hooks.status()) is not None:
                    result.max_reward = max(result.max_reward, float(st.reward))
                    result.success = result.success or bool(st.success)
                    if st.success:
                        break
                if self.hooks.end_requested():
                    break
                k += 1
            self.smooth_stop()
        except _Stop as stop:
            result.stop, result.message = stop.reason, stop.message
            self.log.write({"type": "stop", "episode": self.episode, "reason": stop.reason.name.lower(),
                            "message": stop.message, "t": self.clock.now()})
            if stop.smooth:
                self.smooth_stop()
            else:
                self._try_stop()
        except BaseException:  # a bug, or Ctrl-C pressed twice: stop where the arm is, then raise
            self._try_stop()
            raise
        result.duration_s = self.clock.now() - t_first
        result.chunks, result.dropped = chunks, self.scheduler.dropped
        result.clips = dict(self.safety.clips - clips0)
        self.log.write({"type": "episode", "episode": self.episode, **result.to_dict()})
        self.log.flush()
        return result

    @property
    def obs_keys_all(self) -> list[str]:
        """The keys assembled each cycle: the policy's, plus everything when recording."""
        return list(self.assembler.store_keys) if self.hooks.records else self.obs_keys

    def _first_chunk(self) -> tuple[float, float]:
        """Ask for the episode's first chunk, keep the watchdogs running while it comes, pass the
        start gate (refuse, or ramp and ask again); returns the first cycle's time and the time the
        start ramp took (0.0 without one), s."""
        ramp_s = 0.0
        for attempt in range(2):
            t_obs = self.clock.now()
            obs = self._window(self._window_times(t_obs), self.obs_keys)
            while not self.worker.submit(obs, t_obs):  # a request of the last episode may still run
                self._wait_cycle(t_obs)
            while (res := self._poll()) is None:
                self._wait_cycle(t_obs)
            # The arm held still while it waited for the first chunk, so its observation still
            # holds: the chunk starts now (nothing of it is late), at the next cycle.
            self.latencies.append(res.latency)
            t0 = self.clock.now()
            self.scheduler.add_chunk(res.chunk, t0, t0)
            first = self.scheduler.peek(t0 + self.dt)
            try:
                if self.safety.start_ok(first):
                    return t0, ramp_s
                dist, angle = self.safety.start_gate(first)
            except UnsafeAction as e:
                raise _Stop(StopReason.NON_FINITE_ACTION, f"the policy's first action is unsafe and was not sent: {e}") from e
            lim = self.safety.limits
            msg = (f"start gate: the first target is {dist * 100:.1f} cm / {np.degrees(angle):.0f} deg from the arm "
                   f"(limits {lim.start_max_distance * 100:.1f} cm / {np.degrees(lim.start_max_angle):.0f} deg)")
            if not self.settings.start_ramp or attempt:
                raise _Stop(StopReason.START_REFUSED, msg + ("; move the arm there or set loop.start_ramp=true"
                                                             if not attempt else "; still too far after the ramp"))
            ramp_s = self._ramp_to(first, msg)
        raise AssertionError("unreachable")

    def _ramp_to(self, action, msg: str) -> float:
        """Move slowly (``start_ramp_speed``) to ``action``'s target; returns the time it took, s."""
        t_begin = self.clock.now()
        target = self.safety.unfiltered(action)
        dist, angle = self.safety.start_gate(action)
        v = self.safety.limits.start_ramp_speed  # m/s, and rad/s for the rotation
        duration = max(dist, angle) / v + 0.5
        print(f"{msg}: ramping there at {v} m/s, {np.degrees(v):.1f} deg/s ({duration:.1f} s)", flush=True)
        t_end = self.clock.now() + duration
        self.safety.send(self.robot, target, t_end)
        if self.gripper is not None:
            self.gripper.set_width(target.width, t_end)
        while self.clock.now() < t_end:
            self._wait_cycle(self.clock.now())
        state = self.robot.state()
        self.safety.reset_to(state)
        self.scheduler.reset()
        return self.clock.now() - t_begin

    def _sleep_until(self, t: float) -> None:
        try:
            self.clock.sleep_until(t)  # (a simulator steps its physics here)
        except DeviceError as e:
            raise _Stop(StopReason.ROBOT_FAULT, f"robot: {e}", smooth=False) from e

    def _wait_cycle(self, t_ref: float) -> None:
        """Sleep one cycle, watchdogs on; raises _Stop when the first chunk takes too long."""
        self._sleep_until(self.clock.now() + self.dt)
        now = self.clock.now()
        self._watchdogs(now)
        if now - t_ref > self.settings.first_chunk_timeout_s:
            raise _Stop(StopReason.POLICY_STALLED, f"policy stalled: no first chunk after {now - t_ref:.1f} s "
                                                   f"(first_chunk_timeout_s {self.settings.first_chunk_timeout_s})")

    def smooth_stop(self) -> None:
        """Decelerate from the commanded velocity within ``max_tcp_accel``, then hold."""
        try:
            t = self.clock.now()
            for target in self.safety.stop_path():
                t += self.dt
                self.safety.send(self.robot, target, t)
                self.log.write({"type": "stop_target", "episode": self.episode, "t": t, "cmd": target.position})
                self.clock.sleep_until(t)
            self.robot.stop()  # hold
        except DeviceError:
            self._try_stop()

    def _try_stop(self) -> None:
        try:
            self.robot.stop()
        except Exception:  # noqa: BLE001 - the robot may be gone; nothing more can be done from here
            pass

    def close(self) -> None:
        self.worker.close()
        self.log.close()
