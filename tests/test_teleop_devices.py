"""Teleop devices through their real protocol paths: the SpaceMouse through the real libspnav against
our spacenavd stand-in and through its HID report layouts, the gamepad through pygame's event
queue, and the velocity mapping both share."""

import ctypes.util
import os
import socket
import struct
import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from protege.robot.actions import action_to_pose
from protege.sim.spacenavd_standin import SpacenavdStandin
from protege.teleop.session import KEEP
from protege.teleop.spacemouse import HidReportParser, SpnavReader
from waiting import wait_for
from protege.teleop.velocity import DeviceReader, TeleopDeviceLost, VelocityMapping, VelocityTeleop

needs_libspnav = pytest.mark.skipif(not ctypes.util.find_library("spnav"),
                                    reason="libspnav is not installed (apt-get install libspnav0)")




@pytest.fixture
def daemon(tmp_path):
    d = SpacenavdStandin(str(tmp_path / "spnav.sock")).start()
    yield d
    d.stop()


# -- the velocity mapping ---------------------------------------------------------------------------
def test_mapping_deadband_signs_locks_and_scale():
    m = VelocityMapping(translation_scale=0.2, rotation_scale=1.0, deadband=0.1, signs=[1, -1, 1, 1, 1, 1], lock=["rx"])
    v, w = m.twist([0.05, 1.0, 0.55, 1.0, 0.0, -1.0])
    np.testing.assert_allclose(v, [0.0, -0.2, 0.1])  # within the deadband: 0; the deadband's edge maps to 0
    np.testing.assert_allclose(w, [0.0, 0.0, -1.0])  # rx locked
    for bad in (dict(deadband=1.0), dict(signs=[1, 1, 1]), dict(lock=["yaw"]), dict(frame="world"),
                dict(translation_scale=-1)):
        with pytest.raises(ValueError):
            VelocityMapping(**bad)


class FakeHand(DeviceReader):
    """A reader whose events the test makes (the DeviceReader's own bookkeeping is what is tested)."""

    def run(self):
        self._stop.wait()


def obs_at(position, quat=(0, 0, 0, 1), width=0.085):
    return {"tcp_pose": np.array([*position, *quat]), "gripper_width": np.array([width])}


def test_velocity_teleop_integrates_the_twist_per_period_in_base_and_tool_frames():
    hand = FakeHand("hand")
    dev = VelocityTeleop(hand, dict(translation_scale=0.1, rotation_scale=1.0, deadband=0.0), fps=10, keys=False)
    start = obs_at([0.0, -0.5, 0.2])
    dev.reset(0, start)
    hand._motion(np.array([1.0, 0, 0, 0, 0, 0]))
    for _ in range(3):
        a = dev.act(start)
    pos, quat, width = action_to_pose(a)
    np.testing.assert_allclose(pos, [0.03, -0.5, 0.2], atol=1e-9)  # 0.1 m/s for 3 periods of 0.1 s
    # the tool frame: a tool turned 90 deg about z pushes "x" along the base's y
    tool = VelocityTeleop(hand, dict(translation_scale=0.1, deadband=0.0, frame="tool"), fps=10, keys=False)
    q = Rotation.from_euler("z", 90, degrees=True).as_quat()
    tool.reset(0, obs_at([0.0, -0.5, 0.2], q))
    pos, _, _ = action_to_pose(tool.act(obs_at([0.0, -0.5, 0.2], q)))
    np.testing.assert_allclose(pos, [0.0, -0.49, 0.2], atol=1e-9)
    # yaw: 1 rad/s for one period
    hand._motion(np.array([0, 0, 0, 0, 0, 1.0]))
    _, quat, _ = action_to_pose(dev.act(start))
    assert Rotation.from_quat(quat).as_euler("xyz")[2] == pytest.approx(0.1)
    hand.close()


def test_velocity_teleop_never_leads_the_arm_by_more_than_max_lead_and_toggles_the_gripper():
    hand = FakeHand("hand")
    dev = VelocityTeleop(hand, dict(translation_scale=1.0, deadband=0.0), fps=10, max_lead_m=0.05, keys=False)
    held = obs_at([0.0, -0.5, 0.2])
    dev.reset(0, held)
    hand._motion(np.array([1.0, 0, 0, 0, 0, 0]))
    for _ in range(10):  # the arm does not follow (held against a wall): the target waits 5 cm ahead
        pos, _, width = action_to_pose(dev.act(held))
    assert np.linalg.norm(pos - held["tcp_pose"][:3]) == pytest.approx(0.05)
    assert width == pytest.approx(0.085)
    hand._button(0, True), hand._button(0, False)  # a press between two cycles is not missed
    assert action_to_pose(dev.act(held))[2] == pytest.approx(0.0)
    hand._button(1, True)
    dev.act(held)
    assert dev.poll() == KEEP and dev.poll() is None
    hand._lost("pulled out")
    with pytest.raises(TeleopDeviceLost, match="hand: pulled out"):
        dev.act(held)


# -- SpaceMouse through spacenavd -------------------------------------------------------------------
@needs_libspnav
def test_spacemouse_through_the_real_libspnav(daemon):
    r = SpnavReader(daemon.path)
    r.start()
    try:
        assert daemon.wait_clients(1, proto=1) and daemon.clients[0].name == "protege"
        assert "SpaceMouse Compact" in r.name
        # spacenavd's frame (x right, y up, z toward the user) -> ours (x right, y forward, z up)
        daemon.motion(175, 350, -350, 35, 70, 105)
        assert wait_for(lambda: r.snapshot().events >= 1)
        np.testing.assert_allclose(r.snapshot().axes, [0.5, 1.0, 1.0, 0.1, -0.3, 0.2])
        daemon.button(1, True), daemon.button(1, False), daemon.button(1, True)
        assert wait_for(lambda: r.snapshot().events >= 4)
        assert r.take_presses() == {1: 2} and r.snapshot().buttons == {1: True}
        daemon.unplug()
        assert wait_for(lambda: r.snapshot().lost is not None)
        assert "unplugged" in r.snapshot().lost and not r.snapshot().axes.any()
    finally:
        r.close()


@needs_libspnav
def test_spacemouse_says_when_the_daemon_goes_away_or_is_not_there(daemon, tmp_path):
    r = SpnavReader(daemon.path)
    r.start()
    try:
        daemon.stop()
        assert wait_for(lambda: r.snapshot().lost is not None)
        assert "spacenavd closed the connection" in r.snapshot().lost
    finally:
        r.close()
    with pytest.raises(TeleopDeviceLost, match="no spacenavd at .*nothing.sock"):
        SpnavReader(str(tmp_path / "nothing.sock")).start()


@needs_libspnav
def test_the_standin_refuses_configuration_it_does_not_emulate(daemon):
    lib = ctypes.CDLL(ctypes.util.find_library("spnav"))
    os.environ["SPNAV_SOCKET"] = daemon.path
    assert lib.spnav_open() == 0
    try:
        assert lib.spnav_protocol() == 1 and lib.spnav_dev_axes() == 6 and lib.spnav_dev_buttons() == 2
        vid, pid = ctypes.c_uint(), ctypes.c_uint()
        assert lib.spnav_dev_usbid(ctypes.byref(vid), ctypes.byref(pid)) == 0 and (vid.value, pid.value) == (0x256F, 0xC635)
        lib.spnav_cfg_set_deadzone.argtypes = [ctypes.c_int, ctypes.c_int]
        assert lib.spnav_cfg_set_deadzone(0, 10) == -1  # the daemon's config: refused, never a silent success
        assert daemon.not_emulated
        ev = (ctypes.c_int * 16)()
        daemon.motion(100, -7, 0, 0, 0, 0)
        assert wait_for(lambda: lib.spnav_poll_event(ev) == 1)
        assert (ev[1], ev[2]) == (100, -7)
    finally:
        lib.spnav_close()
        del os.environ["SPNAV_SOCKET"]


def test_a_protocol_0_client_as_older_code_reads_the_daemon(daemon):
    """Older clients (libspnav 0.2, hand-written ones) never ask for protocol 1: they read 8 int32 per event."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(daemon.path)
    s.sendall(struct.pack("=f", 1.0))  # sensitivity, the only thing a v0 client sends
    assert daemon.wait_clients(1, proto=0)
    daemon.motion(1, 2, 3, 4, 5, 6, period_ms=8)
    daemon.button(3, True)
    data = b""
    while len(data) < 64:
        data += s.recv(64 - len(data))
    assert struct.unpack("=16i", data) == (0, 1, 2, 3, 4, 5, 6, 8, 1, 3, 1, 0, 0, 0, 0, 0)
    s.close()


# -- SpaceMouse over HID ------------------------------------------------------------------------------
def test_hid_reports_of_both_layouts():
    # recorded shapes: report id, then int16 little-endian counts; the device's y and z point toward the user and down
    split = HidReportParser("split")
    axes, _ = split.feed(struct.pack("<B3h", 1, 350, -175, 70))
    np.testing.assert_allclose(axes, [1.0, 0.5, -0.2, 0, 0, 0])
    axes, _ = split.feed(struct.pack("<B3h", 2, 35, 0, -350))
    np.testing.assert_allclose(axes, [1.0, 0.5, -0.2, 0.1, 0.0, 1.0])
    single = HidReportParser("single")
    axes, _ = single.feed(struct.pack("<B6h", 1, 0, 350, 0, 0, 175, 0))
    np.testing.assert_allclose(axes, [0, -1.0, 0, 0, -0.5, 0])
    axes, buttons = single.feed(bytes([3, 0b01, 0, 0]))
    assert axes is None and buttons == {0: True}
    assert single.feed(bytes([3, 0b10, 0, 0]))[1] == {0: False, 1: True}
    assert single.feed(bytes([4, 1]))[0] is None  # an LED / battery report: ignored
    assert single.feed(struct.pack("<B6h", 1, 900, 0, 0, 0, 0, 0))[0][0] == 1.0  # beyond full scale: clipped
    with pytest.raises(ValueError):
        HidReportParser("triple")


# -- gamepad -----------------------------------------------------------------------------------------
def test_gamepad_through_pygame_events_deadman_and_unplug():
    pygame = pytest.importorskip("pygame")
    from protege.teleop.gamepad import Gamepad, parse_axis

    assert parse_axis("t5-t2") == [(1.0, "t", 5), (-1.0, "t", 2)]
    with pytest.raises(ValueError, match="expected terms"):
        Gamepad(axes={"x": "stick"})
    dev = Gamepad(mapping=dict(translation_scale=0.1, deadband=0.0), fps=10, keys=False, require_attached=False)
    r = dev.reader
    r.start()
    try:
        r.post(type=pygame.JOYDEVICEADDED, device_index=0, instance_id=7)
        assert wait_for(lambda: r.instance_id == 7)
        start = obs_at([0.0, -0.5, 0.2])
        dev.reset(0, start)
        r.post(type=pygame.JOYAXISMOTION, instance_id=7, joy=0, axis=0, value=1.0)  # left stick right
        r.post(type=pygame.JOYAXISMOTION, instance_id=7, joy=0, axis=5, value=1.0)  # right trigger: up
        assert wait_for(lambda: r.snapshot().events >= 2)
        pos, _, _ = action_to_pose(dev.act(start))
        np.testing.assert_allclose(pos, start["tcp_pose"][:3], atol=1e-12)  # no dead-man button held: still
        r.post(type=pygame.JOYBUTTONDOWN, instance_id=7, joy=0, button=4)
        assert wait_for(lambda: r.snapshot().buttons.get(4))
        pos, _, _ = action_to_pose(dev.act(start))
        np.testing.assert_allclose(pos, [0.01, -0.5, 0.21], atol=1e-9)
        r.post(type=pygame.JOYDEVICEREMOVED, instance_id=7)
        assert wait_for(lambda: r.snapshot().lost is not None)
        with pytest.raises(TeleopDeviceLost, match="gamepad was unplugged"):
            dev.act(start)
    finally:
        dev.close()


def test_gamepad_without_a_pad_says_so():
    pytest.importorskip("pygame")
    from protege.teleop.gamepad import Gamepad

    dev = Gamepad(keys=False)
    with pytest.raises(TeleopDeviceLost, match="no gamepad 0 found"):
        dev.reader.start()


@pytest.mark.slow
def test_record_a_gamepad_episode_in_realtime_simulation(tmp_path):
    """A gamepad episode through the control loop on the simulated arm, into the store: the pad's
    events (posted into pygame's queue, as SDL does) move the TCP only while the dead-man is held."""
    pygame = pytest.importorskip("pygame")
    import threading

    from protege.data.store import EpisodeStore
    from protege.data.writer import BackgroundWriter
    from protege.robot.observation import ObservationAssembler
    from protege.sim.env import SimBackend
    from protege.teleop.gamepad import Gamepad
    from protege.teleop.live import record_live

    backend = SimBackend("lift", cameras=("scene",), image_size=48, clock="realtime",
                         robot_kwargs=dict(max_tcp_speed=0.25, max_tcp_angular_speed=1.0))
    dev = Gamepad(mapping=dict(translation_scale=0.05, deadband=0.0), fps=10, keys=False, require_attached=False)
    dev.reader.start()
    r = dev.reader
    key_meta = ObservationAssembler(backend.robot, backend.gripper, backend.cameras).key_meta
    writer = BackgroundWriter(tmp_path / "pad.zarr", fps=10, key_meta=key_meta)
    safety = dict(workspace_min=[-0.35, -0.8, 0.005], workspace_max=[0.35, -0.2, 0.45], max_tcp_speed=0.25)

    def operator():
        post = lambda **e: r.post(instance_id=3, **e)  # noqa: E731
        post(type=pygame.JOYDEVICEADDED, device_index=0)
        time.sleep(1.5)
        post(type=pygame.JOYAXISMOTION, joy=0, axis=0, value=1.0)   # stick right, dead-man not held: still
        time.sleep(0.5)
        post(type=pygame.JOYBUTTONDOWN, joy=0, button=4)             # dead-man held: +x at 5 cm/s
        time.sleep(1.0)
        post(type=pygame.JOYBUTTONUP, joy=0, button=4)
        time.sleep(0.3)
        post(type=pygame.JOYBUTTONDOWN, joy=0, button=1), post(type=pygame.JOYBUTTONUP, joy=0, button=1)  # B: keep

    threading.Thread(target=operator, daemon=True).start()
    try:
        report = record_live(backend, dev, writer, 1, fps=10.0, safety=safety, time_limit_s=15.0, task="lift",
                             operator="tester", keep="all", device_name="gamepad", max_frame_age_s=1.0)
    finally:
        writer.close()
        dev.close()
        backend.close()
    assert len(report.kept) == 1 and report.stop == 0, report.message
    s = EpisodeStore(tmp_path / "pad.zarr")
    assert s.episode_meta[0]["device"] == "gamepad" and s.episode_meta[0]["action_space"] == "tcp"
    act = s.episode(0)["action"].astype(np.float64)
    steps = np.diff(act[:, 0])
    assert 0.01 < act[-1, 0] - act[0, 0] < 0.08 and np.all(steps >= -1e-6) and steps.max() <= 0.005 + 1e-6
    assert np.abs(act[:, 1:3] - act[0, 1:3]).max() < 1e-6  # only x moved


def test_record_refuses_a_missing_or_misconfigured_device_before_anything_moves(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    bin_ = Path(sys.executable).parent / "protege-record"
    base = [str(bin_), "robot=sim", "task=lift", f"out={tmp_path / 'x.zarr'}"]
    cases = [(["teleop=spacemouse", f"teleop.device.socket={tmp_path / 'none.sock'}"], "no spacenavd at"),
             (["teleop=spacemouse", "teleop.device.mapping.deadband=2"], "deadband must be in [0, 1)"),
             (["teleop=gello", f"teleop.device.calibration={tmp_path / 'none.json'}"], "calibrate-gello"),
             (["teleop=gamepad", "teleop.device.axes.x=stick"], "expected terms")]
    if not ctypes.util.find_library("spnav"):
        cases = cases[1:]
    for args, message in cases:
        p = subprocess.run(base + args, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.zarr").exists()


def test_status_line_draws_in_place_on_a_terminal_only():
    import io

    from protege.teleop.live import StatusLine

    class Tty(io.StringIO):
        def isatty(self):
            return True

    hand = FakeHand("hand")
    dev = VelocityTeleop(hand, fps=10, keys=False)
    out = Tty()
    line = StatusLine(dev, stream=out, hz=1000)
    line.begin(3)
    hand._motion(np.zeros(6))
    line.update()
    text = out.getvalue()
    assert text.startswith("\r\033[K") and "episode 3" in text and "gripper  85 mm" in text and "k keep" in text
    plain = io.StringIO()
    StatusLine(dev, stream=plain).update()
    assert plain.getvalue() == ""  # a log file gets no status lines
