"""The safety filter: property tests of its limits, and its errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from protege.control.safety import SafetyFilter, SafetyLimits, SafetyViolation, UnsafeAction
from protege.robot.actions import pose_to_action
from protege.robot.interfaces import RobotState
from protege.robot.trajectory import quat_angle

DT = 0.1
LIM = SafetyLimits(workspace_min=(-0.3, -0.8, 0.01), workspace_max=(0.3, -0.2, 0.4), max_tcp_speed=0.5,
                   max_tcp_accel=2.0, max_tcp_angular_speed=1.5, gripper_min=0.0, gripper_max=0.085)
DOWN = Rotation.from_matrix([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])

coords = st.floats(-2.0, 2.0)
actions = st.lists(st.tuples(coords, coords, coords, st.floats(-3.2, 3.2), st.floats(-0.2, 0.3)), min_size=1, max_size=40)


@settings(max_examples=80, deadline=None)
@given(actions)
def test_filtered_targets_respect_every_limit(seq):
    f = SafetyFilter(LIM, DT)
    f.reset([0.0, -0.5, 0.25], DOWN.as_quat())
    prev_p, prev_q, prev_v = f.position.copy(), f.quat.copy(), np.zeros(3)
    for x, y, z, yaw, w in seq:
        a = pose_to_action([x, y, z], (Rotation.from_euler("z", yaw) * DOWN).as_quat(), w)
        t = f.filter(a)
        assert np.all(t.position >= np.array(LIM.workspace_min) - 1e-9) and np.all(t.position <= np.array(LIM.workspace_max) + 1e-9)
        v = (t.position - prev_p) / DT
        assert np.linalg.norm(v) <= LIM.max_tcp_speed + 1e-9
        # braking for a wall decelerates by at most a dt per axis (so up to sqrt(3) a dt in a corner)
        bound = LIM.max_tcp_accel * DT * (np.sqrt(3) if "workspace" in t.clipped else 1.0)
        assert np.linalg.norm(v - prev_v) <= bound + 1e-9
        assert quat_angle(prev_q, t.quat) <= LIM.max_tcp_angular_speed * DT + 1e-6
        assert LIM.gripper_min <= t.width <= LIM.gripper_max
        prev_p, prev_q, prev_v = t.position, t.quat, v
    stops = f.stop_targets()  # the smooth stop ends inside the box without hitting a wall
    pts = np.array([prev_p, *stops])
    assert all(f.inside(p) for p in pts)
    vs = np.vstack([prev_v[None], np.diff(pts, axis=0) / DT])
    dv = np.diff(vs, axis=0)
    assert np.all(np.abs(dv) <= LIM.max_tcp_accel * DT + 1e-9)  # per axis (braking for walls)
    assert np.all(np.linalg.norm(dv, axis=1) <= np.sqrt(3) * LIM.max_tcp_accel * DT + 1e-9)
    assert np.linalg.norm(vs[-1]) < 1e-9


def test_a_target_in_reach_passes_unchanged():
    f = SafetyFilter(LIM, DT)
    f.reset([0.0, -0.5, 0.25], DOWN.as_quat())
    t = f.filter(pose_to_action([0.01, -0.5, 0.25], DOWN.as_quat(), 0.04))
    assert t.clipped == () and np.allclose(t.position, [0.01, -0.5, 0.25], atol=1e-6) and t.width == pytest.approx(0.04)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_actions_raise_and_change_nothing(bad):
    f = SafetyFilter(LIM, DT)
    f.reset([0.0, -0.5, 0.25], DOWN.as_quat())
    a = pose_to_action([0.0, -0.5, 0.25], DOWN.as_quat(), 0.04)
    a[1] = bad
    with pytest.raises(UnsafeAction, match="non-finite"):
        f.filter(a)
    with pytest.raises(UnsafeAction, match="degenerate"):
        f.filter(np.zeros(10))
    assert np.allclose(f.position, [0.0, -0.5, 0.25]) and np.allclose(f.velocity, 0)


def test_joint_limits_and_speed_are_checked_on_the_measured_state():
    f = SafetyFilter(SafetyLimits(joint_min=(-1.0,) * 6, joint_max=(1.0,) * 6, joint_margin=0.1, max_joint_speed=2.0), DT)
    ok = RobotState(np.zeros(6), np.zeros(6), np.zeros(3), np.array([0, 0, 0, 1.0]), 0.0)
    f.check_state(ok)
    with pytest.raises(SafetyViolation, match="joint 2 .* limit"):
        f.check_state(RobotState(np.array([0, 0, 0.95, 0, 0, 0]), np.zeros(6), np.zeros(3), np.array([0, 0, 0, 1.0]), 0.0))
    with pytest.raises(SafetyViolation, match="joint 4 turns"):
        f.check_state(RobotState(np.zeros(6), np.array([0, 0, 0, 0, -2.5, 0]), np.zeros(3), np.array([0, 0, 0, 1.0]), 0.0))


def test_start_gate_measures_distance_and_angle():
    f = SafetyFilter(LIM, DT)
    f.reset([0.0, -0.5, 0.25], DOWN.as_quat())
    near = pose_to_action([0.0, -0.48, 0.25], DOWN.as_quat(), 0.08)
    far = pose_to_action([0.0, -0.5, 0.10], DOWN.as_quat(), 0.08)
    turned = pose_to_action([0.0, -0.5, 0.25], (Rotation.from_euler("z", 0.6) * DOWN).as_quat(), 0.08)
    assert f.start_ok(near) and not f.start_ok(far) and not f.start_ok(turned)
    assert f.start_gate(far)[0] == pytest.approx(0.15, abs=1e-6) and f.start_gate(turned)[1] == pytest.approx(0.6, abs=1e-4)


def test_limits_are_validated():
    with pytest.raises(ValueError, match="workspace_min"):
        SafetyLimits(workspace_min=(0, 0, 0), workspace_max=(0, 1, 1))
    with pytest.raises(ValueError, match="max_tcp_speed"):
        SafetyLimits(max_tcp_speed=0)
    with pytest.raises(ValueError, match="unknown safety settings"):
        SafetyLimits.from_config({"max_tcp_sped": 1.0})
    assert SafetyLimits.from_config({"workspace_min": [0, 0, 0], "workspace_max": [1, 1, 1]}).workspace_max == (1.0, 1.0, 1.0)
