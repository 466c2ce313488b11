"""Scripted experts: TCP waypoints planned from the object poses, with seeded variation.

An expert is a teleoperation device like any other: it knows nothing of the recorder or the
simulator's internals, only the :class:`~protege.sim.tasks.TaskState` (object poses, sizes, given
at the episode's start) and the observation it is handed (the store's ``tcp_pose``,
``gripper_width`` and ``timestamp``), and it answers with a TCP target (position m, quaternion
(x, y, z, w), base frame) and a gripper width (m) for a given time.

Each plan is the classic pick skeleton (as in ACT's scripted policies, Zhao et al. 2023, section
4): approach above the object, descend, close, lift, carry, descend, open, retreat. The seed
varies segment durations (x0.8-1.25), approach heights, a lateral via point, and small grasp
offsets (+-3 mm, +-3 deg), so demonstrations differ while staying well inside the gripper's
tolerances. Plans are anchored at the first :meth:`ScriptedExpert.act` call (its observation's
TCP pose and timestamp) and are open loop after that, with one exception, the grasp: the gripper
is commanded closed at once, and the plan waits there until the observed finger gap has stopped
changing (at most :data:`SETTLE_MAX_S`), then lifts on the next step, slowly at first
(:data:`LIFT_START`: 1 cm in 0.4 s, then full speed). A demonstration thus lifts when its last
two observations show the fingers at rest on the object, a moment a policy with two observation
frames can see (a fixed hold after the fingers stop could not be seen: the observation does not
change while the expert waits), and a policy that starts the lift a step or two early still has
the fingers around the object's middle when they close. README's "Simulated lift" measures the
three versions: without the slow start (v2), Diffusion Policy's chunks lifted 1-2 steps early at
full speed and lost the cube (15/100); with it (v3, this code), Diffusion Policy reaches
99/100 (temporal ensembling) and ACT 95/100 (receding horizon).
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from protege.robot.actions import pose_to_action
from protege.sim.tasks import TaskState

OPEN = 0.085  # m, fully open 2F-85
CLOSED = 0.0  # m, squeeze: the fingers stop on the object
# TCP pointing down (z = -z_base), fingers closing along the base x axis at yaw 0.
DOWN = Rotation.from_matrix([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
SPEED = 0.25  # m/s, nominal TCP speed of free moves
CLOSE_S = 0.1  # s, a grasp's close command: one control period at 10 Hz
SETTLED = 0.0005  # m, finger gap change between two observations below which the fingers have stopped
SETTLE_MAX_S = 2.0  # s, the longest a grasp waits for the fingers to stop
LIFT_START = (0.01, 0.4)  # m, s: a grasp's lift begins slowly (2.5 mm per 10 Hz step) before its full speed


@dataclass(frozen=True)
class Waypoint:
    """Reach ``position`` (3,) m with ``rotation`` and gripper ``width`` m, ``duration`` s after the previous one.

    ``settle``: hold here until the fingers have stopped moving before going on (a grasp).
    """

    duration: float
    position: np.ndarray
    rotation: Rotation
    width: float
    settle: bool = False


@dataclass(frozen=True)
class ExpertAction:
    """A target: TCP ``position`` (3,) m, ``quat`` (4,) (x, y, z, w) in the base frame, gripper ``width`` m."""

    position: np.ndarray
    quat: np.ndarray
    width: float


class _Planner:
    """Builds a waypoint list from a start pose, with the seeded variation."""

    def __init__(self, position: np.ndarray, rotation: Rotation, width: float, rng: np.random.Generator):
        self.rng = rng
        self.waypoints = [Waypoint(0.0, np.asarray(position, float), rotation, float(width))]

    @property
    def last(self) -> Waypoint:
        return self.waypoints[-1]

    def _time(self, nominal: float) -> float:
        return nominal * self.rng.uniform(0.8, 1.25)

    def move(self, position, rotation: Rotation | None = None, width: float | None = None,
             duration: float | None = None) -> None:
        """A straight move; its duration from the distance at :data:`SPEED` (at least 0.4 s) unless given."""
        position = np.asarray(position, float)
        rotation = self.last.rotation if rotation is None else rotation
        if duration is None:
            turn = (rotation * self.last.rotation.inv()).magnitude()
            duration = max(0.4, np.linalg.norm(position - self.last.position) / SPEED, turn / 1.5)
        width = self.last.width if width is None else width
        self.waypoints.append(Waypoint(self._time(duration), position, rotation, float(width)))

    def wait(self, duration: float, width: float | None = None) -> None:
        self.move(self.last.position, width=width, duration=duration)

    def close(self) -> None:
        """Command the gripper closed at once (one control period), then hold until the fingers stop."""
        last = self.last
        self.waypoints.append(Waypoint(CLOSE_S, last.position, last.rotation, CLOSED, settle=True))

    def pick(self, center: np.ndarray, yaw: float) -> None:
        """Approach above the object at ``center`` (3,), descend, close, lift clear of the table."""
        rng = self.rng
        grasp_yaw = yaw + np.radians(rng.uniform(-3, 3))
        rot = Rotation.from_euler("z", grasp_yaw) * DOWN
        grasp = center + np.array([*rng.uniform(-0.003, 0.003, 2), rng.uniform(-0.002, 0.004)])
        above = grasp + [0.0, 0.0, rng.uniform(0.08, 0.14)]
        via = 0.5 * (self.last.position + above) + [*rng.uniform(-0.04, 0.04, 2), rng.uniform(0.0, 0.04)]
        self.move(via, rot, width=OPEN)
        self.move(above + [*rng.uniform(-0.01, 0.01, 2), 0.0])
        self.move(grasp, duration=max(0.6, (above[2] - grasp[2]) / 0.12))
        self.wait(0.2)
        self.close()
        rise, rise_s = LIFT_START
        self.move(grasp + [0.0, 0.0, rise], duration=rise_s)
        self.move(grasp + [0.0, 0.0, rng.uniform(0.12, 0.16)], duration=1.0)

    def lift_held(self, rest_z: float) -> None:
        """The object is in the gripper already (an operator taking over mid-task): keep the gripper
        closed and lift from here to where :meth:`pick` ends, ``rest_z`` m being the TCP's height at a
        grasp on the table; slowly for the first :data:`LIFT_START` if still that low."""
        here = self.last
        self.waypoints[-1] = Waypoint(here.duration, here.position, here.rotation, CLOSED)
        rise, rise_s = LIFT_START
        if here.position[2] < rest_z + rise:
            self.move([*here.position[:2], rest_z + rise], duration=rise_s)
        top = rest_z + self.rng.uniform(0.12, 0.16)
        if self.last.position[2] < top:
            self.move([*here.position[:2], top], duration=max(0.4, (top - self.last.position[2]) / 0.13))

    def place(self, release: np.ndarray, yaw: float | None = None) -> None:
        """Carry over ``release`` (3,) (where the TCP lets go), descend, open, retreat upward."""
        rng = self.rng
        rot = self.last.rotation if yaw is None else Rotation.from_euler("z", yaw) * DOWN
        over = release + [*rng.uniform(-0.003, 0.003, 2), 0.0]
        self.move([over[0], over[1], max(self.last.position[2], over[2] + 0.06)], rot)
        self.move(over, duration=0.8)
        self.wait(0.4)
        self.wait(0.5, width=OPEN)
        self.move(over + [0.0, 0.0, 0.1], duration=0.8)


def _cube_yaw(quat_xyzw: np.ndarray, reference: float = 0.0) -> float:
    """The cube's yaw rad folded by its 90 deg symmetry to within 45 deg of ``reference``."""
    yaw = Rotation.from_quat(quat_xyzw).as_euler("xyz")[2]
    return reference + (yaw - reference + np.pi / 4) % (np.pi / 2) - np.pi / 4


def _pick_or_hold(p: _Planner, cube) -> None:
    """Pick ``cube`` (an :class:`~protege.sim.tasks.ObjectState`), or, when it is in the gripper
    already, lift it from where it is: an operator who takes over mid-task goes on from the task's
    stage instead of letting go and starting again."""
    if cube.grasped:
        p.lift_held(rest_z=float(cube.half_extents[2]))
    else:
        p.pick(cube.position, _cube_yaw(cube.quat))


def plan_lift(p: _Planner, objects: TaskState) -> None:
    _pick_or_hold(p, objects["cube"])
    p.move(p.last.position + [0.0, 0.0, p.rng.uniform(0.02, 0.06)], duration=1.0)
    p.wait(2.0)


def plan_pick_place(p: _Planner, objects: TaskState) -> None:
    cube, bin_ = objects["cube"], objects["bin"]
    _pick_or_hold(p, cube)
    top = bin_.position[2] + 2 * bin_.half_extents[2]
    p.place(bin_.position + [0.0, 0.0, top - bin_.position[2] + cube.half_extents[2] + 0.03])
    p.wait(1.0)


def plan_stack(p: _Planner, objects: TaskState) -> None:
    cube, base = objects["cube"], objects["base_cube"]
    grasp_yaw = _cube_yaw(cube.quat)
    _pick_or_hold(p, cube)
    release = base.position + [0.0, 0.0, base.half_extents[2] + cube.half_extents[2] + 0.004]
    p.place(release, yaw=_cube_yaw(base.quat, reference=grasp_yaw))
    p.wait(1.0)


PLANNERS: dict[str, Callable[[_Planner, TaskState], None]] = {
    "lift": plan_lift, "pick_place": plan_pick_place, "stack": plan_stack,
}


class ScriptedExpert:
    """A scripted demonstrator for one task.

    Args:
        task: a name in :data:`PLANNERS`.

    Raises:
        KeyError: no planner for ``task``.

    Usage: ``expert.reset(seed, task.state(scene))``, then once per control step
    ``expert.act(obs, t)`` for the target to reach at time ``t`` (``obs``: the store's keys
    ``tcp_pose`` (7,), ``gripper_width`` (1,) and ``timestamp`` (1,) of the current step; a grasp
    goes on once ``gripper_width`` is the same in two consecutive calls).
    """

    def __init__(self, task: str):
        if task not in PLANNERS:
            raise KeyError(f"no scripted expert for task {task!r}; have {sorted(PLANNERS)}")
        self.task = task
        self._plan = PLANNERS[task]
        self._times: np.ndarray | None = None

    def reset(self, seed: int, task_state: TaskState) -> None:
        """Start a new demonstration of the scene in ``task_state``; ``seed`` draws its variation."""
        self._rng = np.random.default_rng(seed)
        self._objects = task_state
        self._times = None

    def _make_plan(self, obs) -> None:
        pose = np.asarray(obs["tcp_pose"], float)
        planner = _Planner(pose[:3], Rotation.from_quat(pose[3:]), float(np.ravel(obs["gripper_width"])[0]), self._rng)
        self._plan(planner, self._objects)
        wps = planner.waypoints
        self._times = float(np.ravel(obs["timestamp"])[0]) + np.cumsum([w.duration for w in wps])
        self._positions = np.array([w.position for w in wps])
        self._widths = np.array([w.width for w in wps])
        self._rotations = Rotation.concatenate([w.rotation for w in wps])
        self._slerps = [Slerp([0.0, 1.0], self._rotations[i : i + 2]) for i in range(len(wps) - 1)]
        self._gates = [i for i, w in enumerate(wps) if w.settle]  # settle waypoints still ahead
        self._last_width: float | None = None
        self._held = 0.0  # s the next settle waypoint has held so far

    def _hold_at_gate(self, width: float, t: float) -> None:
        """Delay the rest of the plan while the next settle waypoint's time has come and the fingers
        still move (or have not started to: the gap must be below the open width)."""
        while self._gates and t >= self._times[self._gates[0]]:
            k = self._gates[0]
            waited = t - self._times[k]
            moving = self._last_width is None or abs(width - self._last_width) >= SETTLED
            if (not moving and width < OPEN - 0.005) or self._held + waited > SETTLE_MAX_S:
                self._gates.pop(0)  # settled: the plan goes on from here, on this step
                self._held = 0.0
                continue
            self._held += waited
            self._times[k:] += waited  # hold the settle waypoint's target until t
            break

    @property
    def end_time(self) -> float:
        """Time s at which the plan's last waypoint is reached (inf before the first :meth:`act`)."""
        return float("inf") if self._times is None else float(self._times[-1])

    def act(self, obs, t: float) -> ExpertAction:
        """The target for time ``t`` s (the robot's clock). The first call plans from ``obs``.

        Raises:
            RuntimeError: :meth:`reset` was never called.
        """
        if not hasattr(self, "_objects"):
            raise RuntimeError("call reset(seed, task_state) before act()")
        if self._times is None:
            self._make_plan(obs)
        width = float(np.ravel(obs["gripper_width"])[0])
        self._hold_at_gate(width, t)
        self._last_width = width
        times = self._times
        i = int(np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 2))
        s = float(np.clip((t - times[i]) / max(times[i + 1] - times[i], 1e-9), 0.0, 1.0))
        pos = self._positions[i] + s * (self._positions[i + 1] - self._positions[i])
        width = self._widths[i] + s * (self._widths[i + 1] - self._widths[i])
        return ExpertAction(pos, self._slerps[i]([s]).as_quat()[0], float(width))


class ScriptedExpertDevice:
    """The task's scripted expert as a teleop device for the recording session
    (:mod:`protege.teleop.session`); it never asks to stop: the session keeps successful episodes.

    Args:
        task: a name in :data:`PLANNERS`.
        fps: the control rate, Hz: each action is the plan's target one period after its observation.
    """

    def __init__(self, task: str, fps: float = 10.0):
        self.expert = ScriptedExpert(task)
        self.dt = 1.0 / float(fps)

    def reset(self, seed: int, obs, task_state: TaskState | None = None) -> None:
        if task_state is None:
            raise ValueError("the scripted expert plans from the task state: record it in simulation (robot=sim)")
        self.expert.reset(seed, task_state)

    def act(self, obs) -> np.ndarray:
        a = self.expert.act(obs, float(np.ravel(obs["timestamp"])[0]) + self.dt)
        return pose_to_action(a.position, a.quat, a.width)

    def poll(self) -> str | None:
        return None


class ExpertOperator:
    """The task's scripted expert as the operator who corrects a deployed policy in simulation
    (``protege-deploy robot=sim teleop=scripted``: HG-DAgger's expert, scripted so that it can be
    tested and benchmarked). A :class:`~protege.control.loop.Operator`:

    - it keeps the expert's reference plan of the episode (planned from the objects at its start)
      and takes over when the commanded TCP is farther than ``takeover_m`` from that plan's path
      within ``window_s`` s of the current time (a policy merely slower or faster than the plan
      does not trigger it);
    - at a take-over it plans anew from the objects' poses and the arm's pose then, and drives; a
      cube already in the gripper stays there (the plan goes on from the grasp: lift, carry),
      as a person would correct it, never letting go to start the pick again;
    - it gives control back after ``give_back_s`` s (0: it finishes the episode).

    Args:
        backend: the :class:`~protege.sim.env.SimBackend` (the objects' poses, privileged).
        task: a name in :data:`PLANNERS`.
        fps: the control rate, Hz.
    """

    name = "scripted expert"

    def __init__(self, backend, task: str, fps: float = 10.0, takeover_m: float = 0.04, window_s: float = 1.5,
                 give_back_s: float = 2.0):
        if task not in PLANNERS:
            raise KeyError(f"no scripted expert for task {task!r}; have {sorted(PLANNERS)}")
        if takeover_m <= 0 or window_s <= 0 or give_back_s < 0:
            raise ValueError("takeover_m and window_s must be > 0, give_back_s >= 0")
        self.backend, self.task, self.dt = backend, task, 1.0 / float(fps)
        self.takeover_m, self.window_s, self.give_back_s = float(takeover_m), float(window_s), float(give_back_s)
        self.ref = self.expert = None
        self.in_control, self.since, self.seed, self.takeovers = False, 0.0, 0, 0

    def begin(self, seed, obs) -> None:
        self.seed = int(seed or 0)
        self.ref = ScriptedExpert(self.task)
        self.ref.reset(self.seed, self.backend.task_state())
        self.in_control, self.takeovers = False, 0

    def stray(self, obs) -> float:
        """Distance m from the TCP to the reference plan's path within ``window_s`` s of now."""
        t = float(np.ravel(obs["timestamp"])[0])
        self.ref.act(obs, t + self.dt)  # keeps the reference's grasp gate in step with the fingers
        times, pos = self.ref._times, self.ref._positions
        p = np.asarray(obs["tcp_pose"], float)[:3]
        best = np.inf
        for i in range(len(times) - 1):
            if times[i + 1] < t - self.window_s or times[i] > t + self.window_s:
                continue
            a, b = pos[i], pos[i + 1]
            ab = b - a
            s = float(np.clip(np.dot(p - a, ab) / max(np.dot(ab, ab), 1e-12), 0.0, 1.0))
            best = min(best, float(np.linalg.norm(a + s * ab - p)))
        return best

    def wants_control(self, obs) -> bool:
        t = float(np.ravel(obs["timestamp"])[0])
        if self.in_control:
            if self.give_back_s and t - self.since >= self.give_back_s:
                self.in_control = False
                self.ref = ScriptedExpert(self.task)  # a fresh reference from the scene as it is now
                self.ref.reset(self.seed + 1000 * self.takeovers, self.backend.task_state())
            return self.in_control
        if self.stray(obs) > self.takeover_m:
            self.in_control, self.since = True, t
            self.takeovers += 1
        return self.in_control

    def take_over(self, position, quat, width, obs) -> None:
        self.expert = ScriptedExpert(self.task)
        self.expert.reset(self.seed + 1000 * self.takeovers, self.backend.task_state())

    def act(self, obs) -> np.ndarray:
        a = self.expert.act(obs, float(np.ravel(obs["timestamp"])[0]) + self.dt)
        return pose_to_action(a.position, a.quat, a.width)
