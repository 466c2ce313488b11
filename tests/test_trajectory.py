"""The trajectory interpolator of robot/ (replace-after-t, slerp, speed limits) and the host clock."""

import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from protege.robot.clock import HostClock
from protege.robot.trajectory import Trajectory, joint_min_duration, pose_lerp, pose_min_duration, quat_angle


def test_interpolates_and_replaces_later_waypoints():
    s = Trajectory(np.array([0.0]), 0.0)
    s.add(0.0, 1.0, np.array([1.0]))
    s.add(0.0, 2.0, np.array([3.0]))
    assert s(0.5)[0] == pytest.approx(0.5) and s(1.5)[0] == pytest.approx(2.0) and s(9.0)[0] == 3.0
    s.add(0.5, 0.8, np.array([0.0]))  # earlier target: the later ones are dropped, the path starts from now
    assert s(0.65)[0] == pytest.approx(0.25) and s(5.0)[0] == 0.0
    s.add(1.0, 0.2, np.array([7.0]))  # already late: reach at once
    assert s(1.0)[0] == 7.0
    s.hold(1.0)
    assert s(3.0)[0] == 7.0 and s.end_time == 1.0


def test_pose_path_is_linear_then_slerp():
    q0 = Rotation.identity().as_quat()
    q1 = Rotation.from_euler("z", 1.0).as_quat()
    s = Trajectory(np.r_[0.0, 0.0, 0.0, q0], 0.0, pose_lerp)
    s.add(0.0, 1.0, np.r_[1.0, 0.0, 0.0, q1])
    mid = s(0.5)
    assert mid[0] == pytest.approx(0.5) and quat_angle(mid[3:], q0) == pytest.approx(0.5, abs=1e-6)


def test_speed_limits_move_a_waypoint_later_never_faster():
    s = Trajectory(np.r_[0.0, 0.0, 0.0, 0, 0, 0, 1.0], 0.0, pose_lerp, pose_min_duration(0.5, 1.0))
    t = s.add(0.0, 0.1, np.r_[0.2, 0.0, 0.0, 0, 0, 0, 1.0])  # 2 m/s asked
    assert t == pytest.approx(0.4)  # 0.2 m at 0.5 m/s
    assert s(0.2)[0] == pytest.approx(0.1)
    turn = Rotation.from_euler("x", 2.0).as_quat()
    assert s.add(0.4, 0.5, np.r_[0.2, 0.0, 0.0, turn]) == pytest.approx(2.4)  # 2 rad at 1 rad/s
    j = Trajectory(np.zeros(6), 0.0, min_duration=joint_min_duration(np.pi))
    assert j.add(0.0, 0.0, np.r_[np.pi, 0, 0, 0, 0, 0]) == pytest.approx(1.0)


def test_host_clock_sleeps_until():
    c = HostClock()
    t = c.now() + 0.05
    c.sleep_until(t)
    assert c.now() >= t and c.now() - t < 0.05 and c.realtime
    before = time.monotonic()
    c.sleep_until(before - 1.0)  # past: returns at once
    assert time.monotonic() - before < 0.01
