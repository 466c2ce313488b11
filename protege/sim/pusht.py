"""PushT in simulation (gym-pusht, the ``protege[pusht]`` extra), speaking the store's schema.

Observations come out under the keys of Diffusion Policy's PushT store, so one task observation
spec serves training and evaluation alike:

    img       (96, 96, 3) uint8   top-down RGB render
    state     (5,) float32        agent x, agent y, block x, block y, block angle (px, px, px, px, rad)
    keypoint  (9, 2) float32      the T block's 9 keypoints (px)

Actions are the agent's target position (2,) in px, as in the store.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

# The T block's keypoints in its body frame (px). Diffusion Policy's store records them in the
# world frame; these were fitted from all 25,650 steps of pusht_cchi_v7_replay.zarr by rotating the
# recorded keypoints back by the block angle (residual std < 0.03 px, i.e. float rounding; see
# tests/test_pusht_sim.py, which checks them against the store).
KEYPOINTS_LOCAL = np.array(
    [
        [9.268611, 90.022804],
        [-60.992165, -1.1871753],
        [60.907116, -1.3928658],
        [-0.27046284, 25.543589],
        [-14.063669, 122.81129],
        [39.000347, 32.860786],
        [-39.954643, 32.734173],
        [-16.821692, 62.872383],
        [23.54105, -1.7001413],
    ],
    dtype=np.float64,
)

SUCCESS_COVERAGE = 0.95


def block_keypoints(block_xy: np.ndarray, angle: float) -> np.ndarray:
    """World-frame keypoints (9, 2) px of a block at position ``block_xy`` (2,) px and ``angle`` rad."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return (KEYPOINTS_LOCAL @ rot.T + np.asarray(block_xy, dtype=np.float64)).astype(np.float32)


class PushTEnv:
    """One PushT episode at a time.

    Args:
        render_size: side of the observation image (96 as in the store).
        max_steps: episode time limit in control steps (10 Hz); 300 by the field's custom.
        video_size: side of the frames returned by :meth:`render` (for mp4s).

    Raises:
        ImportError: gym-pusht is not installed (``pip install -e '.[pusht]'``).
    """

    store_keys = ("img", "state", "keypoint")

    def __init__(self, render_size: int = 96, max_steps: int = 300, video_size: int = 384):
        try:
            from gym_pusht.envs.pusht import PushTEnv as _GymPushT
        except ImportError as e:  # pragma: no cover - depends on the extra
            raise ImportError("PushT needs the pusht extra: pip install -e '.[pusht]'") from e
        self._env = _GymPushT(
            obs_type="state", render_mode="rgb_array", observation_width=render_size, observation_height=render_size,
            visualization_width=video_size, visualization_height=video_size,
        )
        self.max_steps = max_steps
        self.steps = 0

    def reset(self, seed: int) -> None:
        """Start an episode from the initial state drawn with ``seed``."""
        self._env.reset(seed=int(seed))
        self.steps = 0

    def set_state(self, state: np.ndarray) -> None:
        """Place agent and block exactly at a recorded ``state`` (5,) (agent x, y, block x, y, angle).

        Unlike gym-pusht's ``reset_to_state`` option (which keeps a legacy offset), this sets the
        bodies' poses as the store records them, so the render matches the recorded image.
        """
        env = self._env
        env.agent.position = [float(state[0]), float(state[1])]
        env.block.angle = float(state[4])
        env.block.position = [float(state[2]), float(state[3])]
        env.space.step(1e-6)  # let pymunk update the shapes' cached geometry

    def step(self, action: np.ndarray) -> tuple[float, bool, dict]:
        """Move the agent toward ``action`` (2,) px for one 0.1 s control step.

        Returns ``(reward, done, info)``: reward = min(coverage / 0.95, 1) (the paper's score),
        done at success or the time limit, info with ``coverage`` and ``success``.

        Raises:
            ValueError: a non-finite action (the arm must never be sent NaN).
        """
        action = np.asarray(action, dtype=np.float64).reshape(2)
        if not np.all(np.isfinite(action)):
            raise ValueError(f"non-finite action {action}")
        _, reward, terminated, _, info = self._env.step(action)
        self.steps += 1
        success = bool(info["coverage"] > SUCCESS_COVERAGE)
        return float(reward), bool(terminated or success or self.steps >= self.max_steps), {
            "coverage": float(info["coverage"]), "success": success,
        }

    def observation(self, keys: Iterable[str] = store_keys) -> dict[str, np.ndarray]:
        """The current step under the store's keys (only those asked for are computed)."""
        env = self._env
        keys = set(keys)
        out: dict[str, np.ndarray] = {}
        block_xy = np.array(env.block.position, dtype=np.float64)
        if "state" in keys:
            out["state"] = np.array([*env.agent.position, *block_xy, env.block.angle % (2 * np.pi)], dtype=np.float32)
        if "keypoint" in keys:
            out["keypoint"] = block_keypoints(block_xy, env.block.angle)
        if "img" in keys:
            out["img"] = env._render(visualize=False)  # gym-pusht's observation render, (H, W, 3) uint8
        unknown = keys - set(self.store_keys)
        if unknown:
            raise KeyError(f"PushT has no store keys {sorted(unknown)}; it has {list(self.store_keys)}")
        return out

    def render(self) -> np.ndarray:
        """A (video_size, video_size, 3) uint8 frame with the goal and the last action marked."""
        return self._env.render()

    def close(self) -> None:
        self._env.close()
