"""GELLO through the real dynamixel-sdk against our Dynamixel Protocol 2.0 stand-in on a
pseudo-terminal; its calibration; and the joint-space safety filter it commands through."""

import struct
import time

import numpy as np
import pytest

from protege.control.safety import JointSafetyFilter, SafetyLimits, UnsafeAction
from protege.robot.interfaces import RobotState
from protege.robot.kinematics import ur_tcp_pose
from protege.sim.dynamixel_standin import DynamixelBusStandin, crc16, packet
from protege.teleop.gello import Gello, GelloCalibration, GelloReader, calibrate
from waiting import wait_for
from protege.teleop.velocity import TeleopDeviceLost

dxl = pytest.importorskip("dynamixel_sdk")
IDS = [1, 2, 3, 4, 5, 6, 7]
HOME = np.array([0.0, -np.pi / 2, np.pi / 2, -np.pi / 2, -np.pi / 2, 0.0])




@pytest.fixture
def bus():
    b = DynamixelBusStandin(IDS).start()
    yield b
    b.close()


def test_the_real_sdk_pings_reads_and_writes_through_the_standin(bus):
    port, ph = dxl.PortHandler(bus.port), dxl.PacketHandler(2.0)
    assert port.openPort() and port.setBaudRate(1_000_000)
    assert ph.ping(port, 3) == (1200, dxl.COMM_SUCCESS, 0)  # XL330-M288's model number
    found, result = ph.broadcastPing(port)
    assert result == dxl.COMM_SUCCESS and sorted(found) == IDS
    assert ph.write1ByteTxRx(port, 2, 64, 1) == (dxl.COMM_SUCCESS, 0)
    assert ph.write1ByteTxRx(port, 2, 11, 4)[1] == 7  # EEPROM locked while the torque is on: access error
    assert ph.write1ByteTxRx(port, 2, 132, 0)[1] == 7  # present position is read-only
    assert ph.reboot(port, 2)[1] == 2  # not emulated: instruction error, never a silent success
    bus.set_position(5, -300)
    sync = dxl.GroupSyncRead(port, ph, 132, 4)
    for i in IDS:
        sync.addParam(i)
    assert sync.txRxPacket() == dxl.COMM_SUCCESS
    assert sync.getData(5, 132, 4) == 2**32 - 300  # the SDK hands int32 back unsigned
    # a request with a wrong CRC: the servo answers with error 3 (CRC error), in a valid packet
    bad = bytearray(packet(4, 0x02, struct.pack("<HH", 132, 4)))
    bad[-1] ^= 0x55
    port.clearPort()
    port.writePort(bytes(bad))
    assert wait_for(lambda: port.getBytesAvailable() >= 11)
    reply = port.readPort(64)
    assert reply[4] == 4 and reply[7] == 0x55 and reply[8] == 3
    assert crc16(reply[:-2]) == struct.unpack("<H", reply[-2:])[0]
    port.closePort()


def test_reader_turns_torque_off_reads_signed_ticks_and_names_a_silent_servo(bus):
    for i in IDS:
        bus.servos[i].table[64] = 1  # left on by a previous program
    ticks = [2048, 1024, 3072, -100, 2048, 5000, 2500]
    for i, t in zip(IDS, ticks):
        bus.set_position(i, t)
    r = GelloReader(bus.port, IDS, rate_hz=200, max_failures=3)
    r.start()
    try:
        assert all(bus.register(i, 64) == 0 for i in IDS)  # the leader is moved by hand
        got, t, lost = r.snapshot_ticks()
        assert got.tolist() == ticks and lost is None
        n0 = r.reads
        assert wait_for(lambda: r.reads >= n0 + 5)  # it keeps reading (its rate: benchmarks/teleop_rt.py)
        bus.corrupt_next(4)  # one bad CRC: the next read recovers
        time.sleep(0.1)
        assert r.snapshot_ticks()[2] is None
        bus.silence(3)
        assert wait_for(lambda: r.snapshot_ticks()[2] is not None)
        assert "servo 3 did not answer" in r.snapshot_ticks()[2]
    finally:
        r.close()


def test_reader_refuses_a_missing_servo_and_says_when_the_u2d2_goes_away(bus):
    with pytest.raises(TeleopDeviceLost, match="servo 9 does not answer a ping"):
        GelloReader(bus.port, [1, 9]).start()
    r = GelloReader(bus.port, IDS)
    r.start()
    try:
        bus.unplug()
        assert wait_for(lambda: r.snapshot_ticks()[2] is not None)
        assert "went away" in r.snapshot_ticks()[2]
    finally:
        r.close()
    with pytest.raises(TeleopDeviceLost, match="cannot open"):
        GelloReader("/dev/nonexistent-u2d2", IDS).start()


def test_calibration_walkthrough_maps_the_reference_pose_exactly(bus, tmp_path):
    rng = np.random.default_rng(0)
    ref_ticks = rng.integers(0, 4096, 6)
    for i, t in enumerate(ref_ticks, 1):
        bus.set_position(i, int(t))
    steps = iter([lambda: bus.set_position(7, 2000), lambda: bus.set_position(7, 2700), lambda: None])

    def ask(prompt):  # the user does what the prompt says, then presses Enter
        if prompt.startswith("2/3") or prompt.startswith("3/3"):
            next(steps)()

    out = tmp_path / "gello.json"
    cal = calibrate(bus.port, out, signs=[1, -1, 1, 1, -1, 1], ask=ask, say=lambda s: None)
    np.testing.assert_allclose(cal.joints([*ref_ticks, 2000]), HOME, atol=1e-12)
    assert (cal.gripper_open, cal.gripper_closed) == (2000, 2700)
    back = GelloCalibration.load(out)
    assert back == cal
    # a sign of -1: the servo turning +1024 ticks (pi/2) turns the joint -pi/2
    moved = np.array([*ref_ticks, 2000])
    moved[1] += 1024
    np.testing.assert_allclose(cal.joints(moved)[1], HOME[1] - np.pi / 2, atol=1e-12)
    assert cal.width([0] * 6 + [2000]) == pytest.approx(0.085) and cal.width([0] * 6 + [2700]) == 0.0
    assert cal.width([0] * 6 + [2350]) == pytest.approx(0.0425)
    with pytest.raises(FileNotFoundError, match="calibrate-gello"):
        GelloCalibration.load(tmp_path / "none.json")


def test_gello_waits_for_the_leader_then_ramps_onto_it(bus):
    cal = GelloCalibration.fit([2048] * 6, HOME)  # the leader at 2048 ticks = the follower's home
    dev = Gello(bus.port, cal, start_tolerance=0.2, ramp_s=0.4, fps=10, keys=False, max_age_s=2.0)  # a loaded machine
    follower = HOME + np.array([0.5, 0, 0, 0, 0, 0])  # the arm stands 0.5 rad away on joint 1
    try:
        dev.reset(0, {"joint_positions": follower})
        a = dev.act({})
        np.testing.assert_allclose(a[:6], follower)  # holds: the leader is too far
        assert "largest joint gap 0.50 rad" in dev.status()
        bus.set_position(1, 2048 + round(0.45 / (2 * np.pi) * 4096))  # the user brings the leader close
        assert wait_for(lambda: abs(dev.leader()[0][0] - HOME[0] - 0.45) < 0.01)
        targets = [dev.act({})[0] for _ in range(5)]
        lead = dev.leader()[0][0]
        np.testing.assert_allclose(targets[:4], follower[0] + np.arange(1, 5) / 4 * (lead - follower[0]), atol=1e-9)
        assert targets[4] == pytest.approx(lead)  # then follows
        bus.silence(2)
        assert wait_for(lambda: dev.reader.snapshot_ticks()[2] is not None)
        with pytest.raises(TeleopDeviceLost, match="servo 2"):
            dev.act({})
    finally:
        dev.close()


# -- the joint-space safety filter -------------------------------------------------------------------------
def test_dh_forward_kinematics_matches_the_simulated_arm():
    from protege.sim.env import SimBackend
    from protege.sim.ur_arm import URArm, pose_to_matrix

    b = SimBackend("lift", cameras=(), clock="lockstep")
    try:
        arm = URArm(b)
        rng = np.random.default_rng(1)
        for _ in range(10):
            q = rng.uniform(-3, 3, 6)
            offset = np.array([0.0, 0.0, 0.15, 0.0, 0.0, -1.5708])
            T = pose_to_matrix(arm.forward_kinematics(q, offset))
            pos, quat = ur_tcp_pose(q, offset)
            assert np.linalg.norm(T[:3, 3] - pos) < 0.002  # Menagerie's model vs UR's nominal DH: < 2 mm
            from scipy.spatial.transform import Rotation

            assert (Rotation.from_matrix(T[:3, :3]).inv() * Rotation.from_quat(quat)).magnitude() < 1e-3
    finally:
        b.close()


def state_at(q):
    pos, quat = ur_tcp_pose(q)
    return RobotState(joint_positions=np.asarray(q, float), joint_velocities=np.zeros(6), tcp_position=pos,
                      tcp_quat=quat, timestamp=0.0)


def test_joint_filter_limits_speed_box_and_stops_smoothly():
    lim = SafetyLimits(workspace_min=(-0.8, -0.8, 0.05), workspace_max=(0.8, 0.8, 0.8), max_tcp_speed=2.0,
                       max_tcp_angular_speed=6.0, max_cmd_joint_speed=1.0, max_cmd_joint_accel=100.0,
                       joint_min=(-3.0,) * 6, joint_max=(3.0,) * 6, joint_margin=0.05)
    f = JointSafetyFilter(lim, 0.1, ur_tcp_pose)
    f.reset_to(state_at(HOME))
    t = f.filter(np.r_[HOME + [0.5, 0, 0, 0, 0, 0], 0.04])  # 5 rad/s asked, 1 rad/s allowed
    assert t.joints[0] == pytest.approx(0.1) and "joint_speed" in t.clipped and t.width == 0.04
    np.testing.assert_allclose(t.position, ur_tcp_pose(t.joints)[0])  # the logged TCP is the target's
    for _ in range(40):
        t = f.filter(np.r_[HOME + [5.0, 0, 0, 0, 0, 0], 0.04])
    assert t.joints[0] == pytest.approx(3.0 - 0.1) and "joint_limit" in t.clipped
    # the TCP box through forward kinematics: the shoulder lowering the arm stops at z = 0.05
    f.reset_to(state_at(HOME))
    for _ in range(40):
        t = f.filter(np.r_[HOME + [0, 1.5, 0, 0, 0, 0], 0.04])
        assert f.inside(t.position)
    assert t.position[2] == pytest.approx(0.05, abs=0.003) and "workspace" in t.clipped
    # smooth stop: joint speeds fall at max_cmd_joint_accel
    slow = JointSafetyFilter(SafetyLimits(max_cmd_joint_speed=1.0, max_cmd_joint_accel=2.0, max_tcp_speed=5.0,
                                          max_tcp_angular_speed=6.0), 0.1, ur_tcp_pose)
    slow.reset_to(state_at(HOME))
    for _ in range(10):
        slow.filter(np.r_[HOME + [9.0, 0, 0, 0, 0, 0], 0.04])
    q0 = slow.q[0]
    stops = slow.stop_path()
    speeds = np.diff([q0] + [s.joints[0] for s in stops]) / 0.1
    np.testing.assert_allclose(speeds, [0.8, 0.6, 0.4, 0.2, 0.0], atol=1e-9)  # from 1 rad/s at 2 rad/s^2
    with pytest.raises(UnsafeAction):
        f.filter(np.r_[HOME, np.nan])
    with pytest.raises(UnsafeAction, match="6 joint positions"):
        f.filter(np.zeros(10))
