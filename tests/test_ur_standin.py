"""protege-ur-sim answers as a UR controller does, or refuses as one does: through the real ur-rtde
client (control, receive, IO), a plain dashboard socket, a raw RTDE client in UR's wire format and
plain URScript on port 30003 (docs/ur_standin.md lists what is emulated)."""

import math
import socket
import struct
import time

import numpy as np
import pytest

pytest.importorskip("mujoco")
rtde_receive = pytest.importorskip("rtde_receive")
rtde_control = pytest.importorskip("rtde_control")
rtde_io = pytest.importorskip("rtde_io")

from protege.sim import ur_realtime as realtime  # noqa: E402
from protege.sim.ur_arm import pose_trans  # noqa: E402
from test_ur import dashboard  # noqa: E402
from ur_standin import StandIn  # noqa: E402


@pytest.fixture
def standin():
    s = StandIn()
    yield s
    s.close()


def _wait(cond, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _fresh(c, standin):
    """A new control interface (its script uploaded afresh) in place of ``c``, which holds the registers."""
    c.disconnect()
    return rtde_control.RTDEControlInterface(standin.host)


def _count(standin, text):
    return sum(text in ln for ln in standin.lines)


def test_refused_commands_stop_the_program_and_the_stand_in_keeps_serving(standin):
    r = rtde_receive.RTDEReceiveInterface(standin.host)
    try:
        q, pose = r.getActualQ(), r.getActualTCPPose()
        c = rtde_control.RTDEControlInterface(standin.host)
        t = time.monotonic()
        assert not c.moveJ([math.nan] + q[1:], 1.0, 1.0)  # a runtime error, not a dead controller
        assert time.monotonic() - t < 2.0 and not c.isProgramRunning()
        assert standin.proc.poll() is None and standin.wait_for("is not finite")
        for command in (lambda c: c.servoJ([math.nan] * 6, 0.5, 0.5, 0.002, 0.1, 300),
                        lambda c: c.speedJ([0, math.inf, 0, 0, 0, 0], 0.5, 0.002)):
            c = _fresh(c, standin)
            command(c)
            assert _wait(lambda c=c: not c.isProgramRunning())
        assert _count(standin, "is not finite") == 3
        # an unreachable pose: the inverse kinematics fails, the call returns False, nothing moves
        c = _fresh(c, standin)
        far = list(pose)
        far[0] += 2.0
        t = time.monotonic()
        assert not c.moveL(far, 0.25, 1.2)
        assert time.monotonic() - t < 3.0 and standin.wait_for("movel: no inverse kinematics")
        np.testing.assert_allclose(r.getActualQ(), q, atol=1e-3)
        # a command the stand-in does not emulate stops the program, logged once (forceMode is
        # fire-and-forget: the calls after the stop return False)
        c = _fresh(c, standin)
        results = [c.forceMode([0] * 6, [0, 0, 1, 0, 0, 0], [0, 0, -5, 0, 0, 0], 2, [2, 2, 1.5, 1, 1, 1])
                   for _ in range(5)]
        assert _wait(lambda: not c.isProgramRunning())
        time.sleep(0.1)
        results += [c.forceMode([0] * 6, [0, 0, 1, 0, 0, 0], [0, 0, -5, 0, 0, 0], 2, [2, 2, 1.5, 1, 1, 1])
                    for _ in range(50)]
        assert not any(results[5:])
        assert _count(standin, "force_mode (rtde_control command 6) is not emulated") == 1
        c = _fresh(c, standin)
        assert not c.teachMode() and standin.wait_for("teach_mode (rtde_control command 18) is not emulated")
        c = _fresh(c, standin)
        assert not c.zeroFtSensor()
        np.testing.assert_allclose(r.getActualQ(), q, atol=1e-3)
        c.disconnect()
    finally:
        r.disconnect()


def test_kinematics_tcp_offset_and_path_moves(standin):
    r = rtde_receive.RTDEReceiveInterface(standin.host)
    c = rtde_control.RTDEControlInterface(standin.host)
    try:
        q, pose = r.getActualQ(), r.getActualTCPPose()
        np.testing.assert_allclose(c.getForwardKinematics(), pose, atol=1e-5)
        # (ur-rtde sends an all-zero tcp_offset as "none": the registers keep the last one given, on
        # a real controller too; so the zero-offset call comes before the other)
        q2 = np.array(q) + [0.2, -0.1, 0.15, 0.1, -0.2, 0.3]
        pose2 = c.getForwardKinematics(list(q2), [0.0] * 6)
        np.testing.assert_allclose(c.getInverseKinematics(pose2, list(q2 + 0.05)), q2, atol=1e-4)
        tcp = [0.0, 0.0, 0.1, 0.0, 0.0, 0.3]
        np.testing.assert_allclose(c.getForwardKinematics(q, tcp), pose_trans(pose, tcp), atol=1e-5)
        far = list(pose)
        far[2] += 2.0
        assert c.getInverseKinematicsHasSolution(pose2) and not c.getInverseKinematicsHasSolution(far)
        assert c.isPoseWithinSafetyLimits(pose2) and not c.isPoseWithinSafetyLimits(far)
        assert c.isJointsWithinSafetyLimits(q) and not c.isJointsWithinSafetyLimits([7.0] + q[1:])
        np.testing.assert_allclose(c.poseTrans(pose, tcp), pose_trans(pose, tcp), atol=1e-6)
        # the TCP offset: read back, and the streamed TCP pose is the new TCP's
        assert c.setTcp(tcp)
        np.testing.assert_allclose(c.getTCPOffset(), tcp, atol=1e-9)
        assert _wait(lambda: np.allclose(r.getActualTCPPose(), pose_trans(pose, tcp), atol=1e-4))
        assert c.setTcp([0.0] * 6)
        # a path of two linear moves passes through the first waypoint and ends at the second
        p1 = list(pose)
        p1[0] += 0.04
        p2 = list(p1)
        p2[1] += 0.04
        seen = []
        assert c.moveL([p1 + [0.25, 1.2, 0.0], p2 + [0.25, 1.2, 0.0]], True)  # asynchronous: watch it
        t_end = time.monotonic() + 4
        while time.monotonic() < t_end and not (seen and np.allclose(seen[-1], p2[:3], atol=1e-3)):
            seen.append(r.getActualTCPPose()[:3])
            time.sleep(0.004)
        assert np.min(np.linalg.norm(np.array(seen) - p1[:3], axis=1)) < 3e-3
        np.testing.assert_allclose(seen[-1], p2[:3], atol=1e-3)
        assert _wait(c.isSteady)
        # a path through an unreachable waypoint is refused before anything moves
        q_before = r.getActualQ()
        assert not c.moveL([p1 + [0.25, 1.2, 0.0], far + [0.25, 1.2, 0.0]])
        np.testing.assert_allclose(r.getActualQ(), q_before, atol=1e-3)
        c.disconnect()
    finally:
        r.disconnect()


def test_speed_commands_ramp_and_keep_to_the_joint_speed_limit(standin):
    r = rtde_receive.RTDEReceiveInterface(standin.host)
    c = rtde_control.RTDEControlInterface(standin.host)
    io = rtde_io.RTDEIOInterface(standin.host)
    try:
        assert c.speedJ([-0.6, 0, 0, 0, 0, 0], 0.5, 0.002)  # 0.5 rad/s^2: 1.2 s to full speed
        t0 = r.getTimestamp()
        samples = []
        while r.getTimestamp() - t0 < 0.5:
            samples.append((r.getTimestamp() - t0, r.getTargetQd()[0]))
            time.sleep(0.01)
        t, qd = np.array(samples).T
        np.testing.assert_allclose(qd[t > 0.1], -0.5 * t[t > 0.1], atol=0.03)  # ramped, not stepped
        assert c.speedJ([-10.0, 0, 0, 0, 0, 0], 40.0, 0.002)  # beyond the UR5e's 180 deg/s
        time.sleep(0.4)
        assert math.pi - 0.05 < -r.getActualQd()[0] < math.pi + 0.05
        assert standin.wait_for("beyond the joint speed limit")
        assert c.speedStop(10.0)
        assert _wait(lambda: abs(r.getTargetQd()[0]) < 1e-6, 1.0)
        # the speed slider scales speed commands, and the stream reports it
        assert io.setSpeedSlider(0.5)
        assert _wait(lambda: r.getSpeedScaling() == 0.5 and r.getTargetSpeedFraction() == 0.5)
        assert c.speedJ([0.4, 0, 0, 0, 0, 0], 4.0, 0.002)
        time.sleep(0.4)
        assert r.getTargetQd()[0] == pytest.approx(0.2, abs=0.02)
        c.speedStop(10.0)
        # digital outputs written over RTDE are read back
        assert io.setStandardDigitalOut(3, True)
        assert _wait(lambda: r.getDigitalOutState(3))
        assert r.getActualDigitalOutputBits() == 8
        c.disconnect()
    finally:
        io.disconnect()
        r.disconnect()


def _rtde(sock, kind, payload=b""):
    sock.sendall(struct.pack(">HB", 3 + len(payload), kind) + payload)
    head = sock.recv(3, socket.MSG_WAITALL)
    size, got = struct.unpack(">HB", head)
    body = sock.recv(size - 3, socket.MSG_WAITALL) if size > 3 else b""
    assert got == kind
    return body


# the recipe of examples/record_configuration.xml in UR's RTDE_Python_Client_Library, with its types:
# UR's client refuses a recipe whose types the controller answers differently
UR_RECORD_RECIPE = {
    "timestamp": "DOUBLE", "target_q": "VECTOR6D", "target_qd": "VECTOR6D", "target_qdd": "VECTOR6D",
    "target_current": "VECTOR6D", "target_moment": "VECTOR6D", "actual_q": "VECTOR6D", "actual_qd": "VECTOR6D",
    "actual_current": "VECTOR6D", "joint_control_output": "VECTOR6D", "actual_TCP_pose": "VECTOR6D",
    "actual_TCP_speed": "VECTOR6D", "actual_TCP_force": "VECTOR6D", "target_TCP_pose": "VECTOR6D",
    "target_TCP_speed": "VECTOR6D", "actual_digital_input_bits": "UINT64", "joint_temperatures": "VECTOR6D",
    "actual_execution_time": "DOUBLE", "robot_mode": "INT32", "joint_mode": "VECTOR6INT32", "safety_mode": "INT32",
    "actual_tool_accelerometer": "VECTOR3D", "speed_scaling": "DOUBLE", "target_speed_fraction": "DOUBLE",
    "actual_momentum": "DOUBLE", "actual_main_voltage": "DOUBLE", "actual_robot_voltage": "DOUBLE",
    "actual_robot_current": "DOUBLE", "actual_joint_voltage": "VECTOR6D", "actual_digital_output_bits": "UINT64",
    "runtime_state": "UINT32", "payload": "DOUBLE", "payload_cog": "VECTOR3D", "script_control_line": "UINT32",
    "output_bit_registers0_to_31": "UINT32", "output_int_register_12": "INT32", "output_double_register_23": "DOUBLE",
}


def test_rtde_recipes_stream_on_the_controller_clock_with_the_controller_s_types(standin):
    # UR's RTDE client's wire format (protocol 2): the types as the controller gives them
    with socket.create_connection((standin.host, 30004), timeout=3) as s:
        assert _rtde(s, ord("V"), struct.pack(">H", 2)) == b"\x01"
        body = _rtde(s, ord("O"), struct.pack(">d", 125.0) + ",".join(UR_RECORD_RECIPE).encode())
        assert body[1:].decode().split(",") == list(UR_RECORD_RECIPE.values())
        body = _rtde(s, ord("O"), struct.pack(">d", 10.0) + b"timestamp,joint_position_deviation_ratio,tcp_offset,"
                                                                b"actual_digital_output_bits,no_such_output")
        assert body[1:].decode().split(",") == ["DOUBLE", "DOUBLE", "VECTOR6D", "UINT64", "NOT_FOUND"]
        body = _rtde(s, ord("O"), struct.pack(">d", 10.0) + b"timestamp,joint_position_deviation_ratio,tcp_offset")
        assert body[1:].decode() == "DOUBLE,DOUBLE,VECTOR6D"
        assert _rtde(s, ord("S")) == b"\x01"
        stamps = []
        while len(stamps) < 6:  # a 10 Hz recipe: one package per 0.1 s of controller time, on its grid
            size, kind = struct.unpack(">HB", s.recv(3, socket.MSG_WAITALL))
            body = s.recv(size - 3, socket.MSG_WAITALL)
            if kind == ord("U"):
                stamps.append(struct.unpack_from(">d", body, 1)[0])
                assert len(body) == 1 + 8 * 8
    np.testing.assert_allclose(np.diff(stamps), 0.1, atol=1e-9)
    np.testing.assert_allclose(np.array(stamps) / 0.1, np.round(np.array(stamps) / 0.1), atol=1e-6)
    # through ur-rtde at 10 Hz as well
    r = rtde_receive.RTDEReceiveInterface(standin.host, 10.0)
    try:
        seen = []
        t_end = time.monotonic() + 0.8
        while time.monotonic() < t_end:
            if not seen or seen[-1] != r.getTimestamp():
                seen.append(r.getTimestamp())
            time.sleep(0.005)
        steps = np.diff(seen)
        np.testing.assert_allclose(steps / 0.1, np.round(steps / 0.1), atol=1e-6)
        assert len(seen) >= 5
    finally:
        r.disconnect()


def test_dashboard_power_programs_and_the_protective_stop_unlock_delay(standin):
    assert dashboard(standin.host, "load /programs/pick.urp", "play", "get loaded program", "unlock protective stop",
                     "no such request") == [
        "File not found: /programs/pick.urp", "Failed to execute: play", "No program loaded",
        "Protective stop releasing", "could not understand: 'no such request'"]
    c = rtde_control.RTDEControlInterface(standin.host)
    r = rtde_receive.RTDEReceiveInterface(standin.host)
    try:
        assert dashboard(standin.host, "power off", "robotmode") == ["Powering off", "Robotmode: POWER_OFF"]
        assert _wait(lambda: not c.isProgramRunning()) and _wait(lambda: r.getRobotMode() == 3)  # the stream may lag the reply
        assert dashboard(standin.host, "power on", "brake release", "robotmode")[-1] == "Robotmode: RUNNING"
        c = _fresh(c, standin)
        c.triggerProtectiveStop()  # True or False: the stop ends the program as the call returns
        assert _wait(r.isProtectiveStopped) and _wait(lambda: not c.isProgramRunning())
        t_stop = time.monotonic()
        assert dashboard(standin.host, "unlock protective stop")[0].startswith(
            "Cannot unlock protective stop until 5s after occurrence")
        assert r.isProtectiveStopped()
        time.sleep(max(0.0, 5.1 - (time.monotonic() - t_stop)))
        assert dashboard(standin.host, "unlock protective stop", "safetystatus") == [
            "Protective stop releasing", "Safetystatus: NORMAL"]
        assert _wait(lambda: not r.isProtectiveStopped())
    finally:
        r.disconnect()


def _realtime_package(s) -> bytes:
    """One package of port 30003, read the way lab scripts read it: 1220 bytes, then fields by offset."""
    data = b""
    while len(data) < 1220:
        chunk = s.recv(1220 - len(data))
        assert chunk, "the controller closed the connection"
        data += chunk
    return data


def test_script_port_streams_the_real_time_state_package(standin):
    r = rtde_receive.RTDEReceiveInterface(standin.host)
    try:
        q0, pose0 = np.array(r.getActualQ()), np.array(r.getActualTCPPose())
        with socket.create_connection((standin.host, 30003), timeout=3) as s, \
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as idle:
            idle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that does not read
            idle.connect((standin.host, 30003))
            packages = [_realtime_package(s) for _ in range(20)]
            for data in packages:
                assert struct.unpack(">i", data[:4])[0] == 1220
                np.testing.assert_allclose(struct.unpack(">6d", data[252:300]), q0, atol=1e-3)  # q_actual
                np.testing.assert_allclose(struct.unpack(">6d", data[444:492]), pose0, atol=1e-3)  # tool vector
            fields = [realtime.unpack(d) for d in packages]
            steps = np.diff([f["time"] for f in fields])
            assert np.all(steps > 0) and np.allclose(steps / 0.002, np.round(steps / 0.002), atol=1e-6)
            assert fields[-1]["robot_mode"] == 7 and fields[-1]["program_state"] == 1  # RUNNING, no program
            assert fields[-1]["safety_mode"] == 1 and list(fields[-1]["joint_modes"]) == [253] * 6
            # a program sent on the same connection: the stream shows it playing and the arm moving
            q = q0 + [0.3, 0, 0, 0, 0, 0]
            s.sendall(f"movej([{', '.join(map(str, q))}], a=1.4, v=1.05)\n".encode())
            moving = []
            for _ in range(1000):
                f = realtime.unpack(_realtime_package(s))
                moving.append((f["program_state"], f["qd_actual"][0], f["qd_target"][0]))
                if np.allclose(f["q_actual"], q, atol=2e-3):
                    break
            states, qd, qd_target = np.array(moving).T
            assert 2 in states and qd.max() > 0.3 and qd_target.max() > 0.3
            # the stream agrees with RTDE at one controller time (a slow reader reads up to 50 ms behind)
            time.sleep(1.0)  # the move settles
            t_ref, q_ref = r.getTimestamp(), r.getActualQ()
            while f["time"] < t_ref - 1e-9:
                f = realtime.unpack(_realtime_package(s))
            np.testing.assert_allclose(f["q_actual"], q_ref, atol=1e-4)
            # the client that did not read finds whole packages when it does (those that did not fit were dropped)
            # (it reads what its buffers held, then, after a gap in time, the packages sent since)
            idle.settimeout(3)
            times = []
            while len(times) < 6000 and not (len(times) > 22 and times[-21] - times[-22] > 0.1):
                data = _realtime_package(idle)
                assert struct.unpack(">i", data[:4])[0] == 1220
                times.append(realtime.unpack(data)["time"])
            assert np.all(np.diff(times) > 0) and np.diff(times).max() > 0.1
    finally:
        r.disconnect()


def test_script_port_runs_single_commands_and_refuses_what_it_cannot_run(standin):
    r = rtde_receive.RTDEReceiveInterface(standin.host)
    try:
        q0 = np.array(r.getActualQ())
        with socket.create_connection((standin.host, 30003), timeout=3) as s:
            s.sendall(b"\x00\xffgarbage\x10\n")
            s.sendall(b"def prog():\n  while True:\n    movej([0, 0, 0, 0, 0, 0])\n  end\nend\n")
            assert standin.wait_for("program refused (compile error): line 1")
            assert standin.wait_for("program refused (compile error): line 2: 'while True:'")
            time.sleep(0.2)
            assert r.getRuntimeState() == 1  # STOPPED: nothing runs
            np.testing.assert_allclose(r.getActualQ(), q0, atol=1e-4)
            q = q0 + [0.15, 0, 0, 0, 0, 0]
            s.sendall(f"movej([{', '.join(map(str, q))}], a=1.4, v=1.05)\n".encode())
            assert _wait(lambda: np.allclose(r.getActualQ(), q, atol=2e-3), 5.0)
            s.sendall(b"def io():\n  set_standard_digital_out(2, True)\n  textmsg(\"set\")\nend\n")
            assert _wait(lambda: r.getDigitalOutState(2))
            assert standin.wait_for("textmsg: set")
        for port in (30001, 30002):  # the state-streaming interfaces are not served
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((standin.host, port), timeout=2)
    finally:
        r.disconnect()
