"""The UR arm and the Robotiq gripper through their real client paths (the ur-rtde library, the
URCap socket) against the shipped controller stand-in (protege-ur-sim) on loopback."""

import time

import numpy as np
import pytest

pytest.importorskip("mujoco")
rtde_receive = pytest.importorskip("rtde_receive")
rtde_control = pytest.importorskip("rtde_control")

from protege.robot.check import controller_stamps  # noqa: E402
from protege.robot.interfaces import DeviceError  # noqa: E402
from protege.robot.robotiq import RobotiqGripper  # noqa: E402
from protege.robot.ur import URRobot  # noqa: E402
from ur_standin import StandIn  # noqa: E402

# the simulated 2F-85's pinch point in the flange frame: the TCP of the simulation's policies
SIM_TCP = [0.0, 0.0, 0.1558, 0.0, 0.0, -np.pi / 2]
# the stand-in is Python sharing a loaded CI machine's cores: allow it a late state now and then
SLOW = 0.5


@pytest.fixture
def standin():
    s = StandIn()
    yield s
    s.close()


def test_ur_rtde_streams_state_at_the_servo_rate_and_moves(standin):
    r = rtde_receive.RTDEReceiveInterface(standin.host)
    try:
        stamps = controller_stamps(r, 0.5)
        steps = np.diff(stamps)
        # 500 Hz controller time (a loaded stand-in may send a package per several ticks)
        assert steps.min() == pytest.approx(0.002, abs=1e-6)
        np.testing.assert_allclose(steps / 0.002, np.round(steps / 0.002), atol=1e-6)
        assert len(stamps) > 20
        q0 = np.array(r.getActualQ())
        c = rtde_control.RTDEControlInterface(standin.host)
        assert c.isProgramRunning()
        pose = np.array(r.getActualTCPPose())
        target = pose + [0.05, 0.0, -0.03, 0, 0, 0]
        assert c.moveL(list(target), 0.25, 1.2)  # blocks until done: the register handshake works
        np.testing.assert_allclose(r.getActualTCPPose()[:3], target[:3], atol=2e-3)
        q = np.array(r.getActualQ())
        q[0] += 0.1
        assert c.moveJ(list(q), 1.0, 1.4)
        assert np.array(r.getActualQ())[0] == pytest.approx(q[0], abs=2e-3)
        assert not np.allclose(q0, r.getActualQ(), atol=1e-2)
        c.stopScript()
        assert not c.isProgramRunning()
        c.disconnect()
    finally:
        r.disconnect()


def test_servo_j_follows_joint_targets_and_forward_kinematics_matches_the_controller(standin):
    """A leader arm's joint targets (GELLO) stream with servoJ; the nominal DH kinematics with the
    configured TCP (what the joint safety filter checks the box with) agree with the controller's TCP."""
    with URRobot(host=standin.host, tcp_offset=SIM_TCP, lookahead_time=0.05, state_timeout_s=SLOW) as robot:
        s0 = robot.state()
        pos, quat = robot.forward_kinematics(s0.joint_positions)
        np.testing.assert_allclose(pos, s0.tcp_position, atol=2e-3)  # Menagerie's arm vs UR's nominal DH
        assert abs(np.dot(quat, s0.tcp_quat)) > 1 - 1e-5
        t0 = time.monotonic() + 0.1
        for k in range(11):  # joint 1 turns 0.2 rad in 1 s, joint 4 -0.1 rad
            robot.servo_joints(s0.joint_positions + np.array([0.2, 0, 0, -0.1, 0, 0]) * k / 10, t0 + 0.1 * k)
        time.sleep(1.6)
        s1 = robot.state()
        np.testing.assert_allclose(s1.joint_positions - s0.joint_positions, [0.2, 0, 0, -0.1, 0, 0], atol=3e-3)
        np.testing.assert_allclose(robot.forward_kinematics(s1.joint_positions)[0], s1.tcp_position, atol=2e-3)


def test_servo_l_tracks_the_interpolated_path(standin):
    """Waypoints at 10 Hz (a policy's rate), interpolated and streamed with servoL at 500 Hz."""
    with URRobot(host=standin.host, tcp_offset=SIM_TCP, lookahead_time=0.05, state_timeout_s=SLOW) as robot:
        s0 = robot.state()
        assert abs(time.monotonic() - s0.timestamp) < 0.05  # controller time converted to the host clock
        np.testing.assert_allclose(s0.tcp_position, [0.0, -0.5, 0.25], atol=2e-3)  # the simulated ready pose
        t0 = time.monotonic() + 0.1
        path = [s0.tcp_position + [0.1 * k / 10, 0.05 * k / 10, 0.0] for k in range(11)]  # 0.11 m/s for 1 s
        for k, p in enumerate(path):
            robot.servo_tcp(p, s0.tcp_quat, t0 + 0.1 * k)
        time.sleep(1.6)
        states = [s for s in robot.states(2000) if t0 + 0.2 <= s.timestamp <= t0 + 1.0]
        assert len(states) > 10  # 500 Hz when the machine is idle, fewer under load
        want = np.array([s0.tcp_position + (s.timestamp - t0) * np.array([0.1, 0.05, 0.0]) for s in states])
        err = np.linalg.norm(np.array([s.tcp_position for s in states]) - want, axis=1)
        # lag of about the lookahead time at 0.11 m/s, plus the simulated joints' tracking
        assert err.max() < 0.11 * (0.05 + 0.1) + 0.003, err.max()
        final = robot.state()
        np.testing.assert_allclose(final.tcp_position, path[-1], atol=1.5e-3)
        # states stamped with the controller's 500 Hz clock (converted to the host's): increasing, on
        # its 2 ms grid (a loaded machine delivers fewer of them, never stamps between ticks)
        ts = np.diff([s.timestamp for s in robot.states(200)])
        assert np.all(ts > 0) and np.allclose(ts / 0.002, np.round(ts / 0.002), atol=1e-3), ts


def test_protective_stop_is_raised_and_the_arm_holds(standin):
    with URRobot(host=standin.host, tcp_offset=SIM_TCP, state_timeout_s=SLOW) as robot:
        s0 = robot.state()
        robot.servo_tcp(s0.tcp_position - [0.0, 0.0, 0.35], s0.tcp_quat, time.monotonic() + 1.5)  # into the table
        deadline = time.monotonic() + 8
        with pytest.raises(DeviceError, match="protective stop"):
            while time.monotonic() < deadline:
                robot.state()
                time.sleep(0.01)
    assert standin.wait_for("protective stop: the robot pushes on the table")
    # the controller refuses a new program until the stop is unlocked
    with pytest.raises(DeviceError, match="protective stop"):
        URRobot(host=standin.host, connect_timeout_s=5)


def test_emergency_stop_disconnect_and_a_silent_controller_are_raised_without_hanging(standin):
    with URRobot(host=standin.host, state_timeout_s=SLOW) as robot:
        robot.state()
        standin.send("estop")
        with pytest.raises(DeviceError, match="emergency stop"):
            _poll_until_error(robot)
    standin.send("release")
    # the e-stop powered the robot off: the controller refuses a program until it is powered on and
    # its brakes released
    assert dashboard(standin.host, "robotmode") == ["Robotmode: POWER_OFF"]
    with pytest.raises(DeviceError, match="cannot drive the UR"):
        URRobot(host=standin.host, connect_timeout_s=3)
    assert standin.wait_for("program refused: the robot is POWER_OFF")
    assert dashboard(standin.host, "power on", "robotmode", "brake release", "robotmode") == [
        "Powering on", "Robotmode: IDLE", "Brake releasing", "Robotmode: RUNNING"]
    robot = URRobot(host=standin.host, state_timeout_s=SLOW)
    standin.send("freeze")  # the controller hangs with its sockets open
    t = time.monotonic()
    with pytest.raises(DeviceError, match="no state|stopped answering"):
        _poll_until_error(robot)
    assert time.monotonic() - t < 1.5
    t = time.monotonic()
    robot.close()  # bounded even though servoStop / stopScript get no answer
    assert time.monotonic() - t < 10.0
    standin.send("thaw")
    time.sleep(0.5)
    robot = URRobot(host=standin.host)
    standin.send("drop")
    with pytest.raises(DeviceError):
        _poll_until_error(robot)
    robot.close()


def test_no_controller_is_a_clear_error():
    t = time.monotonic()
    with pytest.raises(DeviceError, match="cannot drive the UR at 127.0.0.254"):
        URRobot(host="127.0.0.254", connect_timeout_s=3)
    assert time.monotonic() - t < 15
    with pytest.raises(ValueError, match="lookahead_time"):
        URRobot(host="127.0.0.254", lookahead_time=0.5)


def test_robotiq_urcap_protocol_moves_detects_and_faults(standin):
    with RobotiqGripper(standin.host) as g:
        assert g.gripper_state().width == pytest.approx(0.085, abs=2e-3)  # activated, open
        g.set_width(0.04, time.monotonic())
        deadline = time.monotonic() + 3
        while abs(g.gripper_state().width - 0.04) > 1.5e-3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert g.gripper_state().width == pytest.approx(0.04, abs=1.5e-3)
        states = g.gripper_states(100)
        assert len(states) > 20 and np.all(np.diff([s.timestamp for s in states]) > 0)
        assert not g.object_detected
    # the raw protocol, as the URCap frames it (no line ending on a reply): a move before
    # activation is a fault the driver reports
    import socket
    with socket.create_connection((standin.host, 63352), timeout=2) as s:
        for line, want in [("SET ACT 0", b"ack"), ("GET STA", b"STA 0"), ("SET POS 200 GTO 1", b"ack"),
                           ("GET FLT", b"FLT 7"), ("GET PRE", b"PRE 200"), ("BOGUS", b"?"), ("SET XYZ 1", b"?")]:
            s.sendall((line + "\n").encode())
            assert s.recv(1024) == want, line
    with RobotiqGripper(standin.host) as g:  # activation clears the fault: the gripper moves again
        g.set_width(0.07, time.monotonic())
        deadline = time.monotonic() + 3
        while abs(g.gripper_state().width - 0.07) > 1.5e-3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert g.gripper_state().width == pytest.approx(0.07, abs=1.5e-3)
    standin.send("drop")
    with pytest.raises(DeviceError, match="Robotiq"):
        g2 = RobotiqGripper(standin.host)
        standin.send("drop")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            g2.gripper_state()
            time.sleep(0.02)
    with pytest.raises(DeviceError, match="no Robotiq URCap"):
        RobotiqGripper("127.0.0.254", timeout_s=0.5)


def dashboard(host: str, *requests: str) -> list[str]:
    """The dashboard server's reply lines to ``requests``, over a plain socket."""
    import socket
    with socket.create_connection((host, 29999), timeout=3) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"Connected: Universal Robots Dashboard Server")
        replies = []
        for r in requests:
            s.sendall((r + "\n").encode())
            replies.append(f.readline().decode().rstrip("\n"))
        return replies


def _poll_until_error(robot, timeout=8.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        robot.state()
        time.sleep(0.005)


def test_hardware_check_reports_the_stand_in_and_what_is_missing(standin, tmp_path):
    import subprocess

    from ur_standin import BIN
    p = subprocess.run([str(BIN / "protege-hardware"), "check", "robot=ur5e", f"robot.host={standin.host}", "camera=sim"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Robotmode: RUNNING" in p.stdout and "state every 2.0 ms" in p.stdout and "gripper 63352" in p.stdout
    assert "everything configured answered" in p.stdout
    standin.send("pstop")
    assert standin.wait_for("protective stop: operator")
    p = subprocess.run([str(BIN / "protege-hardware"), "check", "robot=ur5e", f"robot.host={standin.host}", "camera=opencv",
                        f"camera.devices.scene.device={tmp_path / 'none.avi'}", "gripper=none"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert "[FAIL] safety" in p.stdout and "PROTECTIVE_STOP" in p.stdout and "[FAIL] camera scene" in p.stdout
    p = subprocess.run([str(BIN / "protege-hardware"), "check", "robot=ur5e", "robot.host=127.0.0.254"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "no answer from 127.0.0.254" in p.stdout


class CommonRobotiqClient:
    """A Robotiq URCap client written the way labs commonly write it (after the ``robotiq_gripper.py``
    of ur_rtde's docs): one ``recv`` per request, ``ack`` compared exactly, ``GET`` replies split."""

    def __init__(self, host: str):
        import socket
        self.sock = socket.create_connection((host, 63352), timeout=2.0)

    def set_vars(self, **regs) -> bool:
        self.sock.sendall(("SET" + "".join(f" {k} {v}" for k, v in regs.items()) + "\n").encode())
        return self.sock.recv(1024) == b"ack"

    def get_var(self, name: str) -> int:
        self.sock.sendall(f"GET {name}\n".encode())
        var, value = self.sock.recv(1024).decode().split()
        assert var == name
        return int(value)

    def activate(self) -> None:
        assert self.set_vars(ACT=0) and self.set_vars(ATR=0)
        while self.get_var("ACT") != 0 or self.get_var("STA") != 0:
            time.sleep(0.01)
        assert self.set_vars(ACT=1)
        deadline = time.monotonic() + 5
        while self.get_var("ACT") != 1 or self.get_var("STA") != 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)

    def move_and_wait(self, pos: int) -> tuple[int, int]:
        assert self.set_vars(POS=pos, SPE=255, FOR=50, GTO=1)
        while self.get_var("PRE") != pos:
            time.sleep(0.001)
        deadline = time.monotonic() + 5
        while (obj := self.get_var("OBJ")) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        return self.get_var("POS"), obj


def test_a_robotiq_client_written_the_common_way_drives_the_stand_in(standin):
    """The URCap replies without a line ending: a client comparing ``recv() == b"ack"`` works on it,
    as it does on a real gripper (and our driver above, which tolerates either)."""
    c = CommonRobotiqClient(standin.host)
    try:
        c.activate()
        pos, obj = c.move_and_wait(180)
        assert obj == 3 and abs(pos - 180) <= 6
        pos, obj = c.move_and_wait(0)
        assert obj == 3 and pos <= 6
    finally:
        c.sock.close()
