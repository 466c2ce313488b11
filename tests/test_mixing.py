"""Training on demonstrations and deployment rollouts together (issue 30): which rollout windows
are learned from (HG-DAgger: the operator's corrections only), and the stores' sampling weights."""

import numpy as np
import pytest

from protege.data.dataset import load_training_data
from protege.data.store import EpisodeWriter

OBS = {"s": {"source": "state"}}
ACT = {"source": "action"}
H, TO = 4, 2  # horizon, n_obs_steps


def make(path, episodes, rollout=False, policy_scale=1.0):
    """episodes: list of (length, human flags or None, success); a rollout's policy-driven actions
    are scaled by ``policy_scale``."""
    with EpisodeWriter(path, fps=10) as w:
        for i, (n, human, success) in enumerate(episodes):
            steps = {"state": np.full((n, 3), i + (100 if rollout else 0), np.float32), "action": np.arange(n, dtype=np.float32)[:, None].repeat(2, 1)}
            if rollout:
                steps["intervention"] = np.asarray(human, np.uint8)[:, None]
                steps["action"] = np.where(steps["intervention"] > 0, steps["action"], policy_scale * steps["action"])
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


def test_hg_dagger_learns_only_the_operators_actions(stores):
    demos, rolls, human0 = stores
    data = load_training_data([str(demos), str(rolls)], OBS, ACT, rollouts="human")
    s = kept_windows(data)
    w = s.windows
    first = np.clip(w[:, 0] + TO - 1, w[:, 1], w[:, 2] - 1)
    store = data.row_store[first]
    assert (store == 0).sum() == len(load_training_data(str(demos), OBS, ACT).samplers(H, TO, TO - 1, H - 1, 0.0, 0)[0])
    r0 = 10 + 12  # rollout 0's first row in the concatenation
    # kept: the windows whose chunk starts (row start + 1) in the take-over, rows 6..13
    roll = np.flatnonzero(store == 1)
    assert sorted(int(w[i, 0]) - r0 for i in roll) == [5, 6, 7, 8, 9, 10, 11, 12]
    batch = s.sample(np.arange(len(s)))
    assert batch["learn"][store == 0].all()  # demonstrations: every step
    for i in roll:
        start, a, b = w[i]
        rows = np.clip(start + np.arange(H), a, b - 1)
        learned = rows[batch["learn"][i]]
        assert all(human0[r - r0] for r in learned), (start, learned)  # every learned action is the operator's
        assert batch["learn"][i, TO - 1]  # from the chunk's first step
        # up to the hand-back (row 14) and no further
        assert learned.max() == min(rows.max(), r0 + 13)
    # a window straddling the hand-back learns the correction's last steps only; the policy's
    # actions after it are replaced by the correction's last (edge padding)
    i = next(i for i in roll if w[i, 0] - r0 == 12)
    assert batch["learn"][i].tolist() == [True, True, False, False]
    assert batch["action"][i, :, 0].tolist() == [12, 13, 13, 13]


@pytest.mark.parametrize("policy", ["diffusion", "act"])
def test_the_policys_actions_after_a_hand_back_do_not_reach_the_loss(tmp_path, policy):
    """Two rollout stores that differ only in the policy-driven actions give the same loss."""
    import torch

    from protege.policies.act import ACTPolicy
    from protege.policies.diffusion import DiffusionPolicy
    from protege.policies.distributed import batch_shard
    from protege.policies.normalizer import Normalizer
    from protege.policies.tensors import to_torch

    human = [0] * 6 + [1] * 8 + [0] * 6
    demos = make(tmp_path / "demos.zarr", [(10, None, True)])
    losses = []
    for k, scale in enumerate((1.0, -50.0)):
        rolls = make(tmp_path / f"r{k}.zarr", [(20, human, False)], rollout=True, policy_scale=scale)
        data = load_training_data([str(demos), str(rolls)], OBS, ACT, rollouts="human")
        s, _ = data.samplers(8, 1, 0, 7, 0.0, 0)
        batch = to_torch(s.sample(np.arange(len(s))), data.shape_meta["obs"], [], torch.device("cpu"))
        torch.manual_seed(0)
        if policy == "diffusion":
            pol = DiffusionPolicy(data.shape_meta, Normalizer(data.stats), horizon=8, n_obs_steps=1, n_action_steps=4,
                                  unet={"down_dims": [16, 32], "diffusion_step_embed_dim": 16})
        else:
            pol = ACTPolicy(data.shape_meta, Normalizer(data.stats), chunk_size=8, n_action_steps=4, hidden_dim=32,
                            dim_feedforward=64, n_heads=4, enc_layers=1, dec_layers=1, vae_enc_layers=1, dropout=0.0)
        torch.manual_seed(1)
        losses.append(pol.compute_loss(batch).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    # split unevenly as data parallelism or accumulation does (each part's loss weighted by its share
    # of the rows, the random draws the whole batch's): the parts add up to the whole batch's loss
    n = len(batch["action"])

    def rows(x, part):
        return {k: rows(v, part) for k, v in x.items()} if isinstance(x, dict) else x[part]

    parts = 0.0
    for part in (slice(0, n // 3), slice(n // 3, n)):
        torch.manual_seed(1)
        with batch_shard(part, n):
            parts += pol.compute_loss(rows(batch, part)).item() * (part.stop - part.start) / n
    assert parts == pytest.approx(losses[1], rel=1e-5)
    if policy == "act":  # ACT: the steps after the hand-back count as padding (left out), not as held actions
        as_padding = {**batch, "mask": batch["mask"] & batch["learn"]}
        del as_padding["learn"]
        held = {k: v for k, v in batch.items() if k != "learn"}
        got = []
        for b in (batch, as_padding, held):
            torch.manual_seed(1)
            got.append(pol.compute_loss(b).item())
        assert got[0] == pytest.approx(got[1], rel=1e-6) and abs(got[0] - got[2]) > 1e-3


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
