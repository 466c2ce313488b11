"""The observation assembly: resampling robot, gripper and camera histories to observation times,
latencies, edge padding at the episode start, quaternion sign continuity.

The devices here replay recorded samples through the Robot / Gripper / Camera interfaces (the
way a log-replay driver would), so the times are exact."""

import numpy as np
import pytest

from protege.robot.interfaces import Camera, Frame, Gripper, GripperState, Robot, RobotState
from protege.robot.observation import ObservationAssembler


class ReplayRobot(Robot, Gripper):
    """States at 100 Hz: x = t m, joint 0 = 2 t rad, width = 0.01 t m; the quaternion flips sign at t >= 0.5."""

    def __init__(self, t_end=1.0):
        self.t = np.arange(0.0, t_end + 1e-9, 0.01)

    def _state(self, t):
        q = np.array([0.0, 0.0, np.sin(0.1 * t), np.cos(0.1 * t)])
        return RobotState(np.r_[2 * t, np.zeros(5)], np.zeros(6), np.array([t, 0.0, 0.0]), -q if t >= 0.5 else q, t)

    def state(self):
        return self._state(self.t[-1])

    def states(self, n):
        return [self._state(t) for t in self.t[-n:]]

    def gripper_state(self):
        return GripperState(0.01 * self.t[-1], self.t[-1])

    def gripper_states(self, n):
        return [GripperState(0.01 * t, t) for t in self.t[-n:]]

    def servo_tcp(self, position, quat, t):
        pass

    def servo_joints(self, q, t):
        pass

    def set_width(self, width, t):
        pass

    def stop(self):
        pass

    def close(self):
        pass


class ReplayCamera(Camera):
    """Frames at 30 Hz whose pixels hold their frame index."""

    def __init__(self, t_end=1.0):
        self.times = np.arange(0.0, t_end + 1e-9, 1 / 30)

    def _frame(self, i):
        return Frame(np.full((4, 4, 3), i, np.uint8), float(self.times[i]), i)

    def read(self):
        return self._frame(len(self.times) - 1)

    def frames(self, n):
        return [self._frame(i) for i in range(max(0, len(self.times) - n), len(self.times))]

    def close(self):
        pass


def test_window_resamples_states_and_picks_the_newest_frame_at_or_before_each_time():
    r = ReplayRobot()
    a = ObservationAssembler(r, r, {"scene": ReplayCamera()})
    assert a.store_keys == ("scene_rgb", "tcp_pose", "joint_positions", "gripper_width", "timestamp")
    w = a.window([0.305, 0.405])
    np.testing.assert_allclose(w["tcp_pose"][:, 0], [0.305, 0.405], atol=1e-6)  # interpolated between samples
    np.testing.assert_allclose(w["joint_positions"][:, 0], [0.61, 0.81], atol=1e-6)
    np.testing.assert_allclose(w["gripper_width"][:, 0], [0.00305, 0.00405], atol=1e-7)
    np.testing.assert_allclose(w["timestamp"][:, 0], [0.305, 0.405])
    assert w["scene_rgb"].shape == (2, 4, 4, 3) and list(w["scene_rgb"][:, 0, 0, 0]) == [9, 12]  # 9/30 <= 0.305 < 10/30
    assert w["tcp_pose"].dtype == np.float32 and w["timestamp"].dtype == np.float64


def test_latencies_shift_each_device():
    r = ReplayRobot()
    a = ObservationAssembler(r, r, {"scene": ReplayCamera()}, camera_latency_s=0.1, robot_obs_latency_s=0.02,
                             gripper_latency_s=0.05)
    o = a.at(0.5)
    # a sample stamped ts shows the world at ts - latency: the state at 0.5 was stamped 0.52
    assert o["tcp_pose"][0] == pytest.approx(0.52, abs=1e-6)
    assert o["gripper_width"][0] == pytest.approx(0.0055, abs=1e-7)
    assert o["scene_rgb"][0, 0, 0] == 18  # the frame stamped 0.6 (index 18) shows 0.5


def test_episode_start_pads_with_the_first_sample_and_the_quaternion_never_flips():
    r = ReplayRobot()
    a = ObservationAssembler(r, r, {"scene": ReplayCamera()})
    a.reset(0.4)
    w = a.window([0.2, 0.3, 0.4, 0.45])  # before the episode began: its first sample
    np.testing.assert_allclose(w["tcp_pose"][:, 0], [0.4, 0.4, 0.4, 0.45], atol=1e-6)
    assert list(w["scene_rgb"][:, 0, 0, 0]) == [12, 12, 12, 13]
    q = np.concatenate([w["tcp_pose"][:, 3:], a.window([0.55, 0.6])["tcp_pose"][:, 3:]])
    assert np.all(np.sum(q[1:] * q[:-1], axis=1) > 0)  # the stored sign flip at 0.5 is undone
    a.reset(0.7)
    assert a.at(0.8)["tcp_pose"][6] < 0  # a new episode starts from the device's own sign


def test_unknown_keys_and_bad_latencies_are_clear_errors():
    r = ReplayRobot()
    a = ObservationAssembler(r, None, {})
    assert "gripper_width" not in a.store_keys
    with pytest.raises(KeyError, match="wrist_rgb"):
        a.window([0.5], ["wrist_rgb"])
    with pytest.raises(ValueError, match="not configured"):
        ObservationAssembler(r, r, {"scene": ReplayCamera()}, camera_latency_s={"wrist": 0.1})
    with pytest.raises(ValueError, match=">= 0"):
        ObservationAssembler(r, r, {}, robot_obs_latency_s=-0.1)
