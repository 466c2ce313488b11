import numpy as np
import pytest

pytest.importorskip("gym_pusht")

from protege.data.store import EpisodeStore  # noqa: E402
from protege.sim.pusht import PushTEnv, block_keypoints  # noqa: E402


def test_keypoints_from_block_pose_match_the_store(pusht_path):
    store = EpisodeStore(pusht_path)
    state, kp = store.read("state"), store.read("keypoint")
    rows = np.random.default_rng(0).choice(len(state), 500, replace=False)
    for r in rows:
        np.testing.assert_allclose(block_keypoints(state[r, 2:4], state[r, 4]), kp[r], atol=0.2)


def test_render_of_a_recorded_state_matches_the_recorded_image(pusht_path):
    store = EpisodeStore(pusht_path)
    env = PushTEnv()
    env.reset(0)
    for i in (0, 100):
        ep = store.episode(i, ["state", "img"])
        for t in (0, len(ep["state"]) // 2):
            env.set_state(ep["state"][t])
            obs = env.observation()
            assert obs["img"].shape == (96, 96, 3) and obs["img"].dtype == np.uint8
            assert np.abs(obs["img"].astype(float) - ep["img"][t]).mean() < 1.0
            np.testing.assert_allclose(obs["state"], ep["state"][t], atol=1e-4)


def test_episode_runs_to_the_time_limit_and_reports_coverage():
    env = PushTEnv(max_steps=5)
    env.reset(3)
    obs = env.observation(["state"])
    assert set(obs) == {"state"}
    done = False
    for _ in range(5):
        reward, done, info = env.step(obs["state"][:2])
        assert 0.0 <= info["coverage"] <= 1.0 and 0.0 <= reward <= 1.0
    assert done and env.render().ndim == 3
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.array([np.nan, 1.0]))
    with pytest.raises(KeyError):
        env.observation(["depth"])
