"""Manipulation tasks on the UR5e + 2F-85 table scene: randomised initial states and success checks.

Tasks are chosen by name from :data:`TASKS` (``make_task("lift")``):

=============  =========================================================  ===========
name           success (held ``hold_s`` = 0.5 s of simulated time)         time limit
=============  =========================================================  ===========
``lift``       cube's bottom >= 5 cm above the table, in the gripper         10 s
``pick_place`` cube inside the blue bin, released                            15 s
``stack``      red cube resting on the green cube, released                  15 s
=============  =========================================================  ===========

Each step a task reports a :class:`TaskStatus`: the furthest *stage* the scene is in now (for
diagnosis: where do failed episodes get stuck?), a reward = stage / last stage in [0, 1], and
success. All positions are in the world = robot base frame (m), table top at z = 0.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import mujoco
import numpy as np

from protege.sim.scene import WORKSPACE_CENTER, BinSpec, CubeSpec, Scene, SceneSpec

REACH_TOLERANCE = 0.02  # m, TCP to cube centre for the "reached" stage


@dataclass(frozen=True)
class ObjectState:
    """What an expert (or a perception system) knows of one object.

    Attributes:
        position: (3,) float64 m in the base frame; a cube's centre, the bin's floor centre (z = 0).
        quat: (4,) float64 unit quaternion (x, y, z, w), the object's rotation in the base frame.
        half_extents: (3,) float64 m, half the object's size along its own axes; for a bin the
            inner opening (x, y) and half the wall height.
        grasped: both finger pads touch the object (it is in the gripper).
    """

    position: np.ndarray
    quat: np.ndarray
    half_extents: np.ndarray
    grasped: bool = False


TaskState = dict  # object name -> ObjectState


@dataclass(frozen=True)
class TaskStatus:
    """The task's verdict on the current step: ``stage`` index into the task's ``stages``, reward in [0, 1]."""

    stage: int
    stage_name: str
    reward: float
    success: bool


def yaw_quat(yaw: float) -> np.ndarray:
    """MuJoCo quaternion (4,) wxyz of a rotation by ``yaw`` rad about z."""
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


TASKS: dict[str, type["Task"]] = {}


def register(cls: type["Task"]) -> type["Task"]:
    """Class decorator: make a task selectable by its ``name``."""
    TASKS[cls.name] = cls
    return cls


def make_task(name: str, **kwargs) -> "Task":
    """The task registered as ``name``, built with ``kwargs``.

    Raises:
        KeyError: no such task.
    """
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    return TASKS[name](**kwargs)


class Task(abc.ABC):
    """A task: which objects the scene holds, how they start, and when the episode succeeded.

    Args:
        time_limit_s: episode length limit, s of simulated time (default per task).
        hold_s: the success condition must hold this long, s.
        workspace_half: half-size (x, y) m of the region around :data:`WORKSPACE_CENTER` where
            objects start (default per task).
    """

    name: ClassVar[str]
    scene_spec: ClassVar[SceneSpec]
    stages: ClassVar[tuple[str, ...]]
    default_time_limit_s: ClassVar[float]

    default_workspace_half: ClassVar[tuple[float, float]] = (0.12, 0.1)

    def __init__(self, time_limit_s: float | None = None, hold_s: float = 0.5, workspace_half=None):
        self.time_limit_s = float(time_limit_s or self.default_time_limit_s)
        self.hold_s = float(hold_s)
        self.workspace_half = np.asarray(workspace_half or self.default_workspace_half, float)
        self._since: float | None = None

    def reset(self, scene: Scene, rng: np.random.Generator) -> None:
        """Place the objects at a random initial state drawn from ``rng``, at rest; runs ``mj_forward``."""
        self._since = None
        self._place(scene, rng)
        mujoco.mj_forward(scene.model, scene.data)

    @abc.abstractmethod
    def _place(self, scene: Scene, rng: np.random.Generator) -> None: ...

    @abc.abstractmethod
    def _stage(self, scene: Scene) -> int:
        """Index into ``stages`` of the current situation, ignoring the hold time."""

    def status(self, scene: Scene) -> TaskStatus:
        """Evaluate the current step. Success needs the last stage to have held ``hold_s``; call once per step."""
        stage, last = self._stage(scene), len(self.stages) - 1
        t = scene.data.time
        if stage == last:
            self._since = t if self._since is None else self._since
        else:
            self._since = None
        success = stage == last and t - self._since >= self.hold_s - 1e-9
        if stage == last and not success:
            stage -= 1  # reached, not yet held
        return TaskStatus(stage, self.stages[stage], 1.0 if success else stage / last, success)

    def state(self, scene: Scene) -> TaskState:
        """Every object's :class:`ObjectState` by name."""
        out = {}
        for cube in self.scene_spec.cubes:
            pos, quat = scene.object_pose(cube.name)
            out[cube.name] = ObjectState(pos, quat[[1, 2, 3, 0]], np.full(3, cube.half_size), scene.grasped(cube.name))
        for b in self.scene_spec.bins:
            pos, quat = scene.object_pose(b.name)
            out[b.name] = ObjectState(pos, quat[[1, 2, 3, 0]], np.array([*b.inner_half, b.wall_height / 2]))
        return out

    # -- helpers for subclasses ----------------------------------------------------------------
    def _sample_xy(self, rng: np.random.Generator, n: int = 1, min_dist: float = 0.0) -> np.ndarray:
        """``n`` points (n, 2) in the workspace, pairwise at least ``min_dist`` m apart (rejection sampling)."""
        for _ in range(1000):
            xy = WORKSPACE_CENTER[:2] + rng.uniform(-self.workspace_half, self.workspace_half, (n, 2))
            if all(np.linalg.norm(xy[i] - xy[j]) >= min_dist for i in range(n) for j in range(i)):
                return xy
        raise RuntimeError(f"cannot place {n} objects {min_dist} m apart in the workspace {self.workspace_half}")

    @staticmethod
    def _place_cube(scene: Scene, cube: CubeSpec, xy: np.ndarray, rng: np.random.Generator) -> None:
        scene.set_object_pose(cube.name, [xy[0], xy[1], cube.half_size], yaw_quat(rng.uniform(-np.pi / 4, np.pi / 4)))

    @staticmethod
    def _reached(scene: Scene, name: str) -> bool:
        tcp = scene.data.site_xpos[scene.tcp_site]
        return bool(np.linalg.norm(tcp - scene.object_pose(name)[0]) < REACH_TOLERANCE)


CUBE = CubeSpec("cube", rgba=(0.85, 0.15, 0.15, 1.0))
BASE_CUBE = CubeSpec("base_cube", half_size=0.025, rgba=(0.15, 0.7, 0.2, 1.0))
BIN = BinSpec("bin")


@register
class Lift(Task):
    """Grasp the red cube and lift it 5 cm (its bottom above z = 0.05), holding it."""

    name = "lift"
    scene_spec = SceneSpec(cubes=(CUBE,))
    stages = ("start", "reached", "grasped", "lifted")
    default_time_limit_s = 10.0
    lift_height = 0.05

    def _place(self, scene, rng):
        self._place_cube(scene, CUBE, self._sample_xy(rng)[0], rng)

    def _stage(self, scene):
        grasped = scene.grasped(CUBE.name)
        z = scene.object_pose(CUBE.name)[0][2] - CUBE.half_size
        if grasped and z >= self.lift_height:
            return 3
        if grasped:
            return 2
        return int(self._reached(scene, CUBE.name))


@register
class PickPlace(Task):
    """Put the red cube into the blue bin and let go of it."""

    name = "pick_place"
    scene_spec = SceneSpec(cubes=(CUBE,), bins=(BIN,))
    stages = ("start", "reached", "grasped", "over_bin", "placed")
    default_time_limit_s = 15.0
    default_workspace_half = (0.16, 0.12)

    def _place(self, scene, rng):
        bin_xy, cube_xy = self._sample_xy(rng, 2, 0.16)  # the open fingers must clear the bin's walls
        scene.set_object_pose(BIN.name, [bin_xy[0], bin_xy[1], 0.0])
        self._place_cube(scene, CUBE, cube_xy, rng)

    def _inside_bin(self, scene) -> tuple[bool, bool]:
        """(cube centre over the bin's opening, cube below the wall tops)."""
        cube = scene.object_pose(CUBE.name)[0]
        rel = cube - scene.object_pose(BIN.name)[0]
        over = bool(np.all(np.abs(rel[:2]) < np.asarray(BIN.inner_half)))
        return over, bool(rel[2] < BIN.wall_height + CUBE.half_size)

    def _stage(self, scene):
        grasped = scene.grasped(CUBE.name)
        over, low = self._inside_bin(scene)
        if over and low and not grasped:
            return 4
        if over and grasped:
            return 3
        if grasped:
            return 2
        return int(self._reached(scene, CUBE.name))


@register
class Stack(Task):
    """Put the red cube on top of the (larger) green cube and let go of it."""

    name = "stack"
    scene_spec = SceneSpec(cubes=(CUBE, BASE_CUBE))
    stages = ("start", "reached", "grasped", "over_base", "stacked")
    default_time_limit_s = 15.0

    def _place(self, scene, rng):
        base_xy, cube_xy = self._sample_xy(rng, 2, 0.12)
        self._place_cube(scene, BASE_CUBE, base_xy, rng)
        self._place_cube(scene, CUBE, cube_xy, rng)

    def _stage(self, scene):
        top, base = scene.object_pose(CUBE.name)[0], scene.object_pose(BASE_CUBE.name)[0]
        grasped = scene.grasped(CUBE.name)
        aligned = np.linalg.norm(top[:2] - base[:2]) < BASE_CUBE.half_size
        on_top = abs(top[2] - base[2] - CUBE.half_size - BASE_CUBE.half_size) < 0.005
        base_down = abs(base[2] - BASE_CUBE.half_size) < 0.005
        if aligned and on_top and base_down and not grasped:
            return 4
        if aligned and grasped:
            return 3
        if grasped:
            return 2
        return int(self._reached(scene, CUBE.name))
