import os
import pty

import numpy as np
import pytest

pytest.importorskip("mujoco")

from protege.robot.actions import action_to_pose  # noqa: E402
from protege.sim.env import SimEnv  # noqa: E402
from protege.teleop.devices import KeyboardDevice  # noqa: E402


def test_keyboard_moves_the_target_and_decides_through_a_terminal():
    master, slave = pty.openpty()
    env = SimEnv("lift")
    env.reset(0)
    dev = KeyboardDevice(step_m=0.01, step_deg=10, stream=slave)
    obs = env.observation()
    dev.reset(0, obs)
    start = obs["tcp_pose"][:3]
    pos, _, width = action_to_pose(dev.act({}))
    np.testing.assert_allclose(pos, start, atol=1e-6)  # the observation's pose, float32
    assert width == pytest.approx(0.085)
    os.write(master, b"wwrd ")
    pos, quat, width = action_to_pose(dev.act({}))
    np.testing.assert_allclose(pos - start, [0.01, 0.02, 0.01], atol=1e-6)  # actions are float32
    assert width == 0.0 and dev.poll() is None
    os.write(master, b"k")
    dev.act({})
    assert dev.poll() == "keep" and dev.poll() is None
    os.write(master, b"Q")
    dev.act({})
    assert dev.poll() == "quit"
    env.close()
    os.close(master)
    os.close(slave)
