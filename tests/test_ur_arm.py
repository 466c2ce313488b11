"""The UR controller stand-in's parts on their own: the arm model (kinematics, speed commands) and
the URScript statements it runs, without sockets."""

import numpy as np
import pytest

pytest.importorskip("mujoco")

from protege.sim import urscript  # noqa: E402
from protege.sim.ur_arm import JOINT_SPEED_LIMIT, MotionError, URArm, pose_to_matrix, pose_trans  # noqa: E402


@pytest.fixture(scope="module")
def arm():
    from protege.sim.env import SimBackend
    backend = SimBackend("lift", cameras=(), clock="lockstep")
    backend.reset(0)
    yield URArm(backend)
    backend.close()


def test_inverse_kinematics_inverts_forward_kinematics_and_fails_where_no_solution_exists(arm):
    rng = np.random.default_rng(0)
    q0 = arm.robot.commanded_joint_positions
    for _ in range(10):
        q = q0 + rng.uniform(-0.4, 0.4, 6)
        pose = arm.forward_kinematics(q)
        np.testing.assert_allclose(arm.inverse_kinematics(pose, q + rng.uniform(-0.05, 0.05, 6)), q, atol=1e-5)
        sol = arm.inverse_kinematics(pose)  # from the commanded joints: a solution, maybe another branch
        np.testing.assert_allclose(pose_to_matrix(arm.forward_kinematics(sol)), pose_to_matrix(pose), atol=1e-5)
    tcp = np.array([0.0, 0.0, 0.1, 0.0, 0.0, 0.3])
    np.testing.assert_allclose(pose_to_matrix(arm.forward_kinematics(q0, tcp)),
                               pose_to_matrix(pose_trans(arm.forward_kinematics(q0, np.zeros(6)), tcp)), atol=1e-9)
    far = arm.forward_kinematics(q0) + [0.0, 0.0, 1.5, 0.0, 0.0, 0.0]  # 1.5 m above reach
    assert arm.inverse_kinematics(far) is None
    with pytest.raises(MotionError, match="no inverse kinematics"):
        arm.check_line(far)
    with pytest.raises(MotionError, match="beyond the joint limits"):
        arm.check_joints(q0 + [0, 0, 4.0, 0, 0, 0])  # the elbow's limit is pi


def test_speed_commands_ramp_at_their_acceleration_within_the_joint_speed_limit(arm):
    robot, dt = arm.robot, 0.002

    def run(seconds):
        q = [robot.commanded_joint_positions]
        for _ in range(int(round(seconds / dt))):
            arm.tick(dt)
            robot.advance(dt)
            q.append(robot.commanded_joint_positions)
        return np.diff(q, axis=0) / dt

    arm.speed("j", [0.3, 0, 0, 0, 0, 0], 1.0)  # 0.3 s to full speed
    qd = run(0.5)
    np.testing.assert_allclose(qd[:140, 0], np.arange(1, 141) * dt * 1.0, atol=1e-9)  # ramped, one step a tick
    np.testing.assert_allclose(qd[160:, 0], 0.3, atol=1e-9)
    arm.speed("j", [-10.0, 5.0, 0, 0, 0, 0], 100.0)
    qd = run(0.3)
    assert "beyond the joint speed limit" in arm.capped
    np.testing.assert_allclose(qd[-1, :2], [-JOINT_SPEED_LIMIT, JOINT_SPEED_LIMIT / 2], atol=1e-9)  # direction kept
    arm.stop_speed(20.0)  # pi rad/s at 20 rad/s^2: 0.157 s
    qd = run(0.3)
    assert abs(qd[40, 0]) > 1.0 and np.all(np.abs(qd[-20:]) < 1e-9)
    arm.stop()


def test_urscript_programs_parse_the_calls_the_stand_in_runs_and_refuse_the_rest():
    calls = urscript.parse("def prog():\n  # comment\n  movej([0, -1.57, 1.57, -1.57, -1.57, 0], a=1.4, v=1.05)\n"
                           "  movel(p[0.1, -0.5, 0.3, 0, 3.14, 0], 1.2, 0.25, r=0.01)\n"
                           "  set_standard_digital_out(3, True)\nend\n")
    assert [c.name for c in calls] == ["movej", "movel", "set_standard_digital_out"]
    np.testing.assert_allclose(calls[1].args["pose"], [0.1, -0.5, 0.3, 0, 3.14, 0])
    assert calls[1].args["a"] == 1.2 and calls[1].args["v"] == 0.25 and calls[1].args["r"] == 0.01
    assert calls[0].args["t"] == 0.0 and calls[2].args == {"n": 3, "b": True}
    for bad, why in [("x = 1", "not a call"), ("while True:", "not a call"), ("sleep(1)", "not a call"),
                     ("movej()", "missing q"), ("movej([0]*6)", "movej"), ("movel(p[0,0,0,0,0,0], speed=1)", "speed"),
                     ("def prog():\n  movej([0,0,0,0,0,0])\n", "no closing 'end'"), ("\x00\xff", "not a call")]:
        with pytest.raises(urscript.ScriptError, match=why):
            urscript.parse(bad)
    # ur-rtde's control script with a path injected into exec_move_path() (tabs, as it sends them)
    script = ("def rtde_control():\n    def exec_move_path():\n        textmsg(\"exec_move_path\")\n"
              "        # inject move path\n\tsignal_async_progress(0)\n"
              "\tmovel(p[0.02,-0.5,0.4,0,-3.14,0],a=1.2,v=0.25,r=0)\n\tsignal_async_progress(1)\n"
              "\tmovej([0,-1.5,1.5,-1.5,-1.5,0],a=1.4,v=1.05,r=0)\n    end\n    textmsg(\"x\")\nend\n")
    path = urscript.path_of(script)
    assert [c.name for c in path] == ["movel", "movej"]
    assert urscript.path_of("def rtde_control():\n  textmsg(1)\nend\n") is None


def test_state_outputs_sampled_twice_in_one_tick_give_the_same_speeds():
    """A slow RTDE recipe and a servo-rate one (or the real-time stream) sample the same tick: each
    gets the tick's speeds (the second once read zero), and the real-time package carries them."""
    from protege.sim import ur_realtime
    from protege.sim.ur_controller import URControllerSim
    c = URControllerSim("127.0.0.249", ports={"dashboard": 0, "rtde": 0, "script": 0, "robotiq": 0}, log=lambda s: None)
    try:
        c.arm.speed("j", np.array([0.3, 0, 0, 0, 0, 0]), 10.0)
        for _ in range(100):
            c.step()
        first, second = c.rtde.snapshot(), c.rtde.snapshot()
        assert np.linalg.norm(first["actual_TCP_speed"][:3]) > 0.05 and first["target_qd"][0] > 0.25
        np.testing.assert_array_equal(second["actual_TCP_speed"], first["actual_TCP_speed"])
        np.testing.assert_array_equal(second["target_qd"], first["target_qd"])
        f = ur_realtime.unpack(ur_realtime.package(second))
        np.testing.assert_array_equal(f["tcp_speed_actual"], first["actual_TCP_speed"])
        np.testing.assert_array_equal(f["q_actual"], first["actual_q"])
        assert f["time"] == first["timestamp"] and f["robot_mode"] == 7
        c.step()  # the next tick: new values, speeds over that tick
        third = c.rtde.snapshot()
        assert third["timestamp"] == pytest.approx(first["timestamp"] + c.dt)
        assert third["actual_q"][0] > first["actual_q"][0] and third["target_qd"][0] > 0.25
    finally:
        c.close()
