"""The real-time control loop, each test through the real loop on the MuJoCo UR5e in real-time
simulation: safety filter clips, NaN actions, a hanging policy, a frozen camera, the start gate,
the stop key, a lost robot, and inference latency. The policies here are small scripted
functions of the observation window (the loop takes any ``predict(window) -> chunk``)."""

import json
import os
import threading
import time

import numpy as np
import pytest

pytest.importorskip("mujoco")

from protege.control.cyclelog import CycleLog  # noqa: E402
from protege.control.loop import ActionSource, ControlLoop, Hooks, LoopSettings, StopReason  # noqa: E402
from protege.control.operator import StopKey  # noqa: E402
from protege.control.safety import SafetyFilter, SafetyLimits  # noqa: E402
from protege.control.schedulers import RecedingHorizon, TemporalEnsembling  # noqa: E402
from protege.robot.actions import pose_to_action  # noqa: E402
from protege.robot.frames import ThreadedCamera  # noqa: E402
from protege.robot.interfaces import Frame  # noqa: E402
from protege.robot.observation import ObservationAssembler  # noqa: E402
from protege.sim.env import SimBackend  # noqa: E402

HZ, DT = 10.0, 0.1
LOW = ["tcp_pose", "gripper_width"]
LIMITS = dict(workspace_min=(-0.35, -0.8, 0.005), workspace_max=(0.35, -0.2, 0.45), max_tcp_speed=0.5,
              max_tcp_accel=1.0, max_tcp_angular_speed=2.0, start_max_distance=0.05)


# the controller's own limits, as configs/robot/sim.yaml sets them: the safety filter's
ROBOT = dict(max_tcp_speed=LIMITS["max_tcp_speed"], max_tcp_angular_speed=LIMITS["max_tcp_angular_speed"], max_joint_speed=2.5)


@pytest.fixture(scope="module")
def backend():
    b = SimBackend("lift", cameras=("scene",), image_size=48, clock="realtime", camera_fps=30.0, robot_kwargs=ROBOT)
    yield b
    b.close()


SCHEDULERS = {"receding_horizon": lambda n: RecedingHorizon(n, dt=DT),
              "temporal_ensembling": lambda n: TemporalEnsembling(dt=DT)}


def make_loop(backend, predict, tmp_path, cameras=None, limits=None, settings=None, scheduler="receding_horizon",
              n_action_steps=8, **kw):
    cams = backend.cameras if cameras is None else cameras
    assembler = ObservationAssembler(backend.robot, backend.gripper, cams)
    lim = SafetyLimits(**{**LIMITS, **(limits or {})})
    delay = kw.pop("inference_delay_s", 0.0)
    return ControlLoop(backend.robot, backend.gripper, cams, backend.clock, ActionSource(predict, LOW, inference_delay_s=delay),
                       assembler, SCHEDULERS[scheduler](n_action_steps), SafetyFilter(lim, DT),
                       settings or LoopSettings(control_hz=HZ), Hooks(**kw), log=CycleLog(tmp_path / "deploy.jsonl"))


def records(tmp_path, kind):
    return [r for r in map(json.loads, (tmp_path / "deploy.jsonl").read_text().splitlines()) if r["type"] == kind]


def toward(goal, speed=0.2, n=16, width=0.085):
    """A policy: a chunk of waypoints moving the TCP from its observed pose toward ``goal`` at ``speed`` m/s."""
    goal = np.asarray(goal, float)

    def predict(window):
        pose = window["tcp_pose"][-1].astype(float)
        out = []
        p = pose[:3].copy()
        for _ in range(n):
            d = goal - p
            step = min(np.linalg.norm(d), speed * DT)
            p = p + (d / max(np.linalg.norm(d), 1e-9)) * step
            out.append(pose_to_action(p, pose[3:], width))
        return np.stack(out)

    return predict


def start(backend, seed=0):
    return backend.reset(seed)


def measured_speed_after(backend, seconds=0.3):
    states = backend.robot.states(int(seconds * 100))
    p = np.array([s.tcp_position for s in states])
    t = np.array([s.timestamp for s in states])
    return np.linalg.norm(p[-1] - p[0]) / (t[-1] - t[0])


def test_a_moving_policy_runs_to_the_time_limit_and_is_tracked(backend, tmp_path):
    t0 = start(backend)
    p0 = backend.robot.state().tcp_position
    goal = p0 + [0.08, 0.0, 0.05]
    loop = make_loop(backend, toward(goal), tmp_path)
    res = loop.run_episode(t0, time_limit_s=2.0)
    loop.close()
    assert res.stop == StopReason.COMPLETED and res.steps >= 10 and res.chunks >= 2
    assert not res.clips.get("gripper_range")
    assert np.linalg.norm(backend.robot.state().tcp_position - goal) < 0.01
    cyc = records(tmp_path, "cycle")
    assert [c["k"] for c in cyc] == list(range(len(cyc)))
    assert max(c["cmd_speed"] for c in cyc) <= LIMITS["max_tcp_speed"] + 1e-9


def test_out_of_workspace_target_is_clipped_and_reported(backend, tmp_path):
    t0 = start(backend)
    p0 = backend.robot.state().tcp_position
    wall = p0[0] + 0.04
    loop = make_loop(backend, toward(p0 + [0.3, 0.0, 0.0], speed=0.3), tmp_path,
                     limits={"workspace_max": (wall, -0.2, 0.45)})
    res = loop.run_episode(t0, time_limit_s=2.0)
    loop.close()
    assert res.stop == StopReason.COMPLETED and res.clips.get("workspace", 0) > 5
    cyc = records(tmp_path, "cycle")
    assert any("workspace" in c["clipped"] for c in cyc)
    assert max(c["cmd"][0] for c in cyc) <= wall + 1e-5  # (the log keeps 6 decimals)
    assert max(c["meas"][0] for c in cyc) <= wall + 0.003  # the arm stayed in the box
    assert backend.robot.state().tcp_position[0] == pytest.approx(wall, abs=0.003)


def test_nan_action_stops_the_arm_and_never_reaches_it(backend, tmp_path):
    t0 = start(backend)
    p0 = backend.robot.state().tcp_position
    good = toward(p0 + [0.0, 0.0, 0.1], speed=0.2)
    calls = []

    def predict(window):
        calls.append(1)
        chunk = good(window)
        if len(calls) > 1:
            chunk[:, 0] = np.nan
        return chunk

    sent = []
    servo = backend.robot.servo_tcp
    backend.robot.servo_tcp = lambda p, q, t: (sent.append(np.asarray(p)), servo(p, q, t))[1]
    try:
        loop = make_loop(backend, predict, tmp_path, n_action_steps=4)
        res = loop.run_episode(t0, time_limit_s=5.0)
        loop.close()
    finally:
        del backend.robot.servo_tcp
    assert res.stop == StopReason.NON_FINITE_ACTION and "non-finite" in res.message
    assert all(np.isfinite(p).all() for p in sent)
    time.sleep(0.4)
    assert measured_speed_after(backend) < 0.01  # at rest, holding


def test_hanging_policy_trips_the_watchdog_and_the_arm_decelerates_within_limits(backend, tmp_path):
    t0 = start(backend)
    p0 = backend.robot.state().tcp_position
    hang = threading.Event()
    moving = toward(p0 + [0.3, 0.0, 0.0], speed=0.25, n=16)
    calls = []

    def predict(window):
        calls.append(1)
        if len(calls) > 1:
            hang.wait(30)  # never returns in time
        return moving(window)

    loop = make_loop(backend, predict, tmp_path)
    res = loop.run_episode(t0, time_limit_s=10.0)
    hang.set()
    loop.close()
    assert res.stop == StopReason.POLICY_STALLED and "inference running" in res.message
    cyc, stops = records(tmp_path, "cycle"), records(tmp_path, "stop_target")
    cmds = np.array([c["cmd"] for c in cyc] + [s["cmd"] for s in stops])
    v = np.diff(cmds, axis=0) / DT
    assert np.linalg.norm(v[len(cyc) - 2]) > 0.2  # it was moving fast when the policy hung
    acc = np.linalg.norm(np.diff(v, axis=0), axis=1) / DT
    assert acc.max() <= LIMITS["max_tcp_accel"] + 1e-6  # decelerated within the limit
    assert np.linalg.norm(v[-1]) < 1e-9 and len(stops) >= 3  # to rest, not at once
    time.sleep(0.4)
    assert measured_speed_after(backend) < 0.01


def test_frozen_camera_is_caught(backend, tmp_path):
    class Freezes:
        """A driver whose frames stop after 0.5 s (a camera that hangs without an error)."""

        def __init__(self):
            self.i, self.release = -1, threading.Event()

        def open(self):
            self.t0 = time.monotonic()

        def grab(self):
            time.sleep(1 / 30)
            if time.monotonic() - self.t0 > 0.5:
                self.release.wait()
            self.i += 1
            return Frame(np.zeros((8, 8, 3), np.uint8), time.monotonic(), self.i)

        def close(self):
            pass

    t0 = start(backend)
    src = Freezes()
    cam = ThreadedCamera(src, "frozen")
    cams = {**backend.cameras, "frozen": cam}
    loop = make_loop(backend, toward(backend.robot.state().tcp_position + [0, 0, 0.05]), tmp_path, cameras=cams,
                     settings=LoopSettings(control_hz=HZ, max_frame_age_s=0.3))
    res = loop.run_episode(t0, time_limit_s=5.0)
    loop.close()
    src.release.set()
    cam.close()
    assert res.stop == StopReason.CAMERA_STALE and "'frozen' is stale" in res.message
    assert res.duration_s < 2.0


def test_start_gate_refuses_a_far_start_or_ramps_slowly(backend, tmp_path):
    t0 = start(backend)
    p0 = backend.robot.state().tcp_position
    far = p0 + [0.0, 0.0, 0.15]

    def jump(window):  # the first target is 15 cm away
        pose = window["tcp_pose"][-1].astype(float)
        return np.stack([pose_to_action(far, pose[3:], 0.085)] * 8)

    loop = make_loop(backend, jump, tmp_path)
    res = loop.run_episode(t0, time_limit_s=2.0)
    loop.close()
    assert res.stop == StopReason.START_REFUSED and "start gate" in res.message and res.steps == 0
    assert np.linalg.norm(backend.robot.state().tcp_position - p0) < 0.002  # the arm never moved

    t0 = start(backend)
    loop = make_loop(backend, jump, tmp_path / "ramp", settings=LoopSettings(control_hz=HZ, start_ramp=True),
                     limits={"start_ramp_speed": 0.15})
    res = loop.run_episode(t0, time_limit_s=2.0)  # the ramp takes 1.5 s + 0.5 s: it must not eat the policy's time
    loop.close()
    assert res.stop == StopReason.COMPLETED and res.steps >= 0.8 * 2.0 * HZ
    assert np.linalg.norm(backend.robot.state().tcp_position - far) < 0.01


def test_stop_key_stops(backend, tmp_path):
    r, w = os.pipe()
    key = StopKey(fd=r, catch_sigint=False)
    t0 = start(backend)
    p0 = backend.robot.state().tcp_position
    loop = make_loop(backend, toward(p0 + [0.0, 0.2, 0.0], speed=0.2), tmp_path, stop_requested=key)
    threading.Timer(1.0, lambda: os.write(w, b"s")).start()
    res = loop.run_episode(t0, time_limit_s=10.0)
    loop.close()
    key.close()
    os.close(r)
    os.close(w)
    assert res.stop == StopReason.OPERATOR and 0.8 < res.duration_s < 3.0
    assert len(records(tmp_path, "stop_target")) >= 2
    time.sleep(0.4)
    assert measured_speed_after(backend) < 0.01


def test_lost_robot_is_a_fault(tmp_path):
    b = SimBackend("lift", cameras=("scene",), image_size=48, clock="realtime")
    t0 = b.reset(0)
    loop = make_loop(b, toward(b.robot.state().tcp_position + [0, 0, 0.05]), tmp_path)
    threading.Timer(0.8, b.robot.close).start()
    res = loop.run_episode(t0, time_limit_s=5.0)
    loop.close()
    b.close()
    assert res.stop == StopReason.ROBOT_FAULT and "closed" in res.message


def test_inference_latency_is_measured_and_compensated(backend, tmp_path):
    t0 = start(backend)
    p0 = backend.robot.state().tcp_position
    loop = make_loop(backend, toward(p0 + [0.0, 0.0, 0.1], speed=0.1), tmp_path, inference_delay_s=0.3)
    res = loop.run_episode(t0, time_limit_s=3.0)
    loop.close()
    assert res.stop == StopReason.COMPLETED  # never ran dry: chunks were asked for early enough
    assert res.dropped >= 2 * (res.chunks - 1)  # ~3 actions of every chunk were late and dropped
    chunks = [c["chunk"] for c in records(tmp_path, "cycle") if c["chunk"]]
    assert all(0.29 < ch["t_end"] - ch["t_obs"] < 1.0 for ch in chunks)  # the delay plus the policy's own time
    assert loop.lead_s() > 0.3


def test_a_first_chunk_faster_than_the_next_does_not_stall_the_loop(backend, tmp_path):
    # the episode's first chunk is computed with the arm still, often faster than the ones under
    # way; sizing the lead on it alone ran the queue dry at the second chunk (policy_stalled)
    t0 = start(backend)
    p0 = backend.robot.state().tcp_position
    moving = toward(p0 + [0.0, 0.0, 0.1], speed=0.1)
    calls = []

    def predict(window):
        calls.append(1)
        if len(calls) > 1:
            time.sleep(0.35)  # with Ta = 8 (0.8 s), asked for 0.1 s + margin early this runs dry
        return moving(window)

    loop = make_loop(backend, predict, tmp_path)
    res = loop.run_episode(t0, time_limit_s=4.0)
    loop.close()
    assert res.stop == StopReason.COMPLETED, res.message
    assert res.chunks >= 5 and loop.running_chunks >= loop.WARMUP_CHUNKS
    assert 0.35 < loop.lead_s() < 1.0  # measured now: the slow latency plus the margin


def test_a_task_without_a_scene_is_a_clear_error():
    with pytest.raises(ValueError, match="sim_task"):
        SimBackend(None)


def test_an_overrun_skips_cycles_instead_of_sending_late_targets(backend, tmp_path):
    t0 = start(backend)
    p0 = backend.robot.state().tcp_position
    steps = []

    def on_step(obs, action):  # the loop's thread stalls once for 0.35 s (a slow disk, a GC pause)
        steps.append(1)
        if len(steps) == 4:
            time.sleep(0.35)

    loop = make_loop(backend, toward(p0 + [0.0, 0.0, 0.1], speed=0.1, n=30), tmp_path, on_step=on_step,
                     n_action_steps=30)
    res = loop.run_episode(t0, time_limit_s=2.0)
    loop.close()
    assert res.stop == StopReason.COMPLETED
    cyc = records(tmp_path, "cycle")
    ks = [c["k"] for c in cyc]
    assert any(b - a >= 3 for a, b in zip(ks, ks[1:]))  # 2-3 cycles skipped after the stall
    assert all(c["wake"] - c["t"] < 0.1 for c in cyc)  # every target sent was still ahead of the arm
    assert res.dropped >= 2  # their actions were dropped, not sent late


def test_a_teleop_action_too_late_for_its_cycle_holds_the_arm_instead_of_stopping_it(backend, tmp_path):
    """A device read inline (teleop) whose action comes after its cycle's deadline (the machine
    stalled between the wake and the send): the cycle is skipped, the episode goes on."""
    t0 = start(backend)
    pose = backend.robot.state().tcp_pose
    calls = []

    def device(window):  # the operator holds still; the 3rd read stalls for 0.15 s
        calls.append(1)
        if len(calls) == 3:
            time.sleep(0.15)
        return pose_to_action(pose[:3], pose[3:], 0.085)[None]

    assembler = ObservationAssembler(backend.robot, backend.gripper, backend.cameras)
    loop = ControlLoop(backend.robot, backend.gripper, backend.cameras, backend.clock,
                       ActionSource(device, LOW, inline=True), assembler, RecedingHorizon(1, dt=DT),
                       SafetyFilter(SafetyLimits(**LIMITS), DT), LoopSettings(control_hz=HZ, latency_margin_s=0.0),
                       Hooks(), log=CycleLog(tmp_path / "deploy.jsonl"))
    res = loop.run_episode(t0, time_limit_s=1.0)
    loop.close()
    assert res.stop == StopReason.COMPLETED, res.message
    late = records(tmp_path, "late")
    assert len(late) >= 1 and late[0]["now"] - late[0]["t"] > DT  # the action came after its cycle's deadline
    assert len(records(tmp_path, "cycle")) >= 5


class ScriptOperator:
    """An operator who takes over at cycle ``on`` and gives back at ``off``, driving toward
    ``goal``; with ``die_at`` their device is lost at that cycle."""

    name = "test operator"

    def __init__(self, goal, on=5, off=12, die_at=None):
        self.goal, self.on, self.off, self.die_at = np.asarray(goal, float), on, off, die_at
        self.k, self.started_at, self.pose = -1, None, None

    def begin(self, seed, obs):
        self.k = -1

    def wants_control(self, obs):
        from protege.control.inference import ActionSourceLost

        self.k += 1
        if self.die_at is not None and self.k >= self.die_at:
            raise ActionSourceLost("teleop device test: unplugged")
        return self.on <= self.k < self.off

    def take_over(self, position, quat, width, obs):
        self.started_at, self.pose = np.asarray(position).copy(), np.asarray(quat).copy()

    def act(self, obs):  # jumps straight to the goal: the filter must smooth it
        return pose_to_action(self.goal, self.pose, 0.085)


def test_an_operator_takes_over_and_gives_back_without_a_jump_and_every_step_is_labelled(backend, tmp_path):
    t0 = start(backend)
    p0 = backend.robot.state().tcp_position
    steps = []
    op = ScriptOperator(p0 + [0.0, 0.12, 0.0])
    assembler = ObservationAssembler(backend.robot, backend.gripper, backend.cameras)
    loop = ControlLoop(backend.robot, backend.gripper, backend.cameras, backend.clock,
                       ActionSource(toward(p0 + [0.1, 0.0, 0.0], speed=0.1, n=16), LOW), assembler, RecedingHorizon(8, dt=DT),
                       SafetyFilter(SafetyLimits(**LIMITS), DT), LoopSettings(control_hz=HZ),
                       Hooks(on_step=lambda obs, action: steps.append(int(obs["intervention"][0]))),
                       log=CycleLog(tmp_path / "deploy.jsonl"), operator=op)
    res = loop.run_episode(t0, time_limit_s=2.5)
    loop.close()
    assert res.stop == StopReason.COMPLETED, res.message  # the policy resumed without a stall
    cyc = records(tmp_path, "cycle")
    human = [c["human"] for c in cyc]
    assert human == [5 <= i < 12 for i in range(len(cyc))] and steps == [int(h) for h in human]
    assert len(records(tmp_path, "takeover")) == 1 and len(records(tmp_path, "handback")) == 1
    np.testing.assert_allclose(op.started_at, cyc[4]["cmd"], atol=1e-6)  # the device started at the last commanded target
    cmd = np.array([c["cmd"] for c in cyc])
    step = np.linalg.norm(np.diff(cmd, axis=0), axis=1)
    assert step.max() <= LIMITS["max_tcp_speed"] * DT + 1e-9  # no jump at either hand-over
    assert cmd[11, 1] - cmd[4, 1] > 0.05 and cmd[-1, 0] - cmd[12, 0] > 0.03  # the person moved it, then the policy did
    assert any(c["request"] for c in cyc[5:12])  # the policy kept predicting while the person drove


def test_an_operators_device_lost_during_a_take_over_stops_the_arm(backend, tmp_path):
    t0 = start(backend)
    p0 = backend.robot.state().tcp_position
    op = ScriptOperator(p0 + [0.0, 0.12, 0.0], on=3, off=100, die_at=8)
    assembler = ObservationAssembler(backend.robot, backend.gripper, backend.cameras)
    loop = ControlLoop(backend.robot, backend.gripper, backend.cameras, backend.clock,
                       ActionSource(toward(p0, n=16), LOW), assembler, RecedingHorizon(8, dt=DT),
                       SafetyFilter(SafetyLimits(**LIMITS), DT), LoopSettings(control_hz=HZ), Hooks(),
                       log=CycleLog(tmp_path / "deploy.jsonl"), operator=op)
    res = loop.run_episode(t0, time_limit_s=3.0)
    loop.close()
    assert res.stop == StopReason.TELEOP_DEVICE and "unplugged" in res.message
    stops = np.array([r["cmd"] for r in records(tmp_path, "stop_target")])
    assert len(stops) >= 2  # decelerated within the limits, not dropped
    assert np.linalg.norm(np.diff(stops, axis=0), axis=1).max() <= LIMITS["max_tcp_speed"] * DT + 1e-9
    time.sleep(0.5)
    assert measured_speed_after(backend, 0.3) < 0.02  # then at rest


def test_the_report_takes_cycles_skipped_after_an_overrun_as_periods_of_the_schedule():
    """A slow first chunk skips cycles 1 and 2: the run's period is still dt (not the 0.3 s between
    the first two logged cycles), and the wake after the skip, on schedule, is no jitter."""
    from protege.deploy.report import summarize

    def cycle(k, late=0.0):
        return {"type": "cycle", "episode": 0, "k": k, "t": 5 + 0.1 * k, "wake": 5 + 0.1 * k + late,
                "cmd": [0.0, 0.0, 0.0], "meas": [0.0, 0.0, 0.001 * k], "cmd_speed": 0.0}

    s = summarize([cycle(0), cycle(3, 0.002), cycle(4), cycle(5, 0.01), cycle(6)])
    assert s["dt_ms"] == pytest.approx(100)
    assert s["period_jitter_ms"]["max"] == pytest.approx(10)  # 5 -> 6: 10 ms late; 4 -> 5 and 5 -> 6: 10 ms off dt
    assert s["tracking_error_mm"]["max"] == pytest.approx(6)  # meas one cycle after cmd: (3, 4), (4, 5), (5, 6)
    assert s["tracking_error_mm"]["p50"] == pytest.approx(5)
