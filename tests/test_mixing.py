"""Training on demonstrations and deployment rollouts together (issue 30): which rollout windows
are learned from (HG-DAgger: the operator's corrections only), and the stores' sampling weights."""

import numpy as np
import pytest

from protege.data.dataset import load_training_data
from protege.data.store import EpisodeWriter

OBS = {"s": {"source": "state"}}
ACT = {"source": "action"}
H, TO = 4, 2  # horizon, n_obs_steps


def make(path, episodes, rollout=False):
    """episodes: list of (length, human flags or None, success)."""
    with EpisodeWriter(path, fps=10) as w:
        for i, (n, human, success) in enumerate(episodes):
            steps = {"state": np.full((n, 3), i + (100 if rollout else 0), np.float32), "action": np.arange(n, dtype=np.float32)[:, None].repeat(2, 1)}
            if rollout:
                steps["intervention"] = np.asarray(human, np.uint8)[:, None]
            w.add_episode(steps, source="policy_rollout" if rollout else "teleop", success=success)
    return path


@pytest.fixture
def stores(tmp_path):
    demos = make(tmp_path / "demos.zarr", [(10, None, True), (12, None, True)])
    # rollout 0 failed: the operator drove steps 6-13; rollout 1 succeeded with no take-over
    human0 = [0] * 6 + [1] * 8 + [0] * 6
    rolls = make(tmp_path / "rollouts.zarr", [(20, human0, False), (15, [0] * 15, True)], rollout=True)
    return demos, rolls, human0


def kept_windows(data):
    sampler, _ = data.samplers(H, TO, TO - 1, H - 1, 0.0, 0)
    return sampler


def test_hg_dagger_learns_only_windows_the_operator_drove(stores):
    demos, rolls, human0 = stores
    data = load_training_data([str(demos), str(rolls)], OBS, ACT, rollouts="human")
    s = kept_windows(data)
    w = s.windows
    first = np.clip(w[:, 0] + TO - 1, w[:, 1], w[:, 2] - 1)
    store = data.row_store[first]
    assert (store == 0).sum() == len(load_training_data(str(demos), OBS, ACT).samplers(H, TO, TO - 1, H - 1, 0.0, 0)[0])
    roll = w[store == 1]
    assert len(roll) > 0
    r0 = 10 + 12  # rollout 0's first row in the concatenation
    for start, a, b in roll:
        rows = range(max(start + TO - 1, a), min(start + H, b))
        assert all(human0[r - r0] for r in rows), (start, a, b)  # every learned action is the operator's
    # the windows straddling a hand-over are left out, the ones inside the take-over kept
    starts = sorted(int(x[0]) - r0 for x in roll)
    assert starts == [5, 6, 7, 8, 9, 10]  # actions from rows 6..13, a window learns rows start+1 .. start+3


def test_human_and_success_adds_the_successful_episodes_and_all_keeps_everything(stores):
    demos, rolls, _ = stores
    hs = kept_windows(load_training_data([str(demos), str(rolls)], OBS, ACT, rollouts="human_and_success"))
    full = kept_windows(load_training_data([str(demos), str(rolls)], OBS, ACT, rollouts="all"))
    human = kept_windows(load_training_data([str(demos), str(rolls)], OBS, ACT, rollouts="human"))
    r1 = 10 + 12 + 20
    assert len(hs) == len(human) + sum(1 for w in full.windows if w[1] == r1)  # + every window of the success
    assert len(full) > len(hs)
    with pytest.raises(ValueError, match="data.rollouts"):
        load_training_data([str(demos)], OBS, ACT, rollouts="some")


def test_store_weights_set_each_stores_share_of_the_draws(stores):
    demos, rolls, _ = stores
    data = load_training_data([str(demos), str(rolls)], OBS, ACT, weights=[3.0, 1.0], rollouts="all")
    s = kept_windows(data)
    rng = np.random.default_rng(0)
    from_rollouts = np.concatenate([b["s"][:, -1, 0] >= 100 for _ in range(300) for b in s.batches(16, rng)])
    assert np.mean(~from_rollouts) == pytest.approx(0.75, abs=0.02)  # demonstrations: 3 of every 4 draws
    plain = kept_windows(load_training_data([str(demos), str(rolls)], OBS, ACT, rollouts="all"))
    n_demo = sum(1 for w in plain.windows if w[1] < 22)
    assert plain.weights is None and 0.3 < n_demo / len(plain) < 0.6  # without weights: as many as each has
    with pytest.raises(ValueError, match="one positive weight per store"):
        load_training_data([str(demos), str(rolls)], OBS, ACT, weights=[1.0])
