import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from protege.data.sampler import SequenceSampler, sequence_windows, split_episodes, window_indices

lengths_st = st.lists(st.integers(1, 30), min_size=1, max_size=6)


def _store(lengths):
    ends = np.cumsum(lengths)
    data = np.arange(ends[-1], dtype=np.float32)[:, None]  # value = global row index
    return ends, data


@settings(max_examples=200, deadline=None)
@given(lengths=lengths_st, horizon=st.integers(1, 20), n_obs=st.integers(1, 4), n_act=st.integers(1, 10))
def test_windows_are_edge_padded_and_masked(lengths, horizon, n_obs, n_act):
    ends, data = _store(lengths)
    starts = ends - np.array(lengths)
    pad_before, pad_after = min(n_obs - 1, horizon - 1), min(n_act - 1, horizon - 1)
    windows = sequence_windows(ends, horizon, pad_before, pad_after)
    # every episode, however short, yields at least one window: nothing is silently dropped
    assert set(windows[:, 1]) == set(starts)
    idx, mask = window_indices(windows, horizon)
    for (t, s, e), row, m in zip(windows, idx, mask):
        assert s - pad_before <= t
        want = np.arange(t, t + horizon)
        # real steps are the window's own rows, padded ones repeat the first / last frame (never zeros)
        np.testing.assert_array_equal(row[m], want[m])
        assert np.all(row[want < s] == s) and np.all(row[want >= e] == e - 1)
        np.testing.assert_array_equal(m, (want >= s) & (want < e))
        assert m.any()
    # the first window of an episode starts pad_before early; the last reaches pad_after past its end
    for s, e in zip(starts, ends):
        ws = windows[windows[:, 1] == s, 0]
        assert ws.min() == s - pad_before
        if e - s + pad_before + pad_after >= horizon:
            assert ws.max() + horizon - 1 == e - 1 + pad_after


def test_sampler_returns_obs_steps_and_full_action_horizon():
    ends, data = _store([5, 3])
    sampler = SequenceSampler({"obs": data, "action": data * 10}, ends, horizon=4, key_steps={"obs": 2},
                              pad_before=1, pad_after=2)
    batch = sampler.sample(np.arange(len(sampler)))
    assert batch["obs"].shape == (len(sampler), 2, 1) and batch["action"].shape == (len(sampler), 4, 1)
    assert batch["mask"].shape == (len(sampler), 4)
    first = batch["action"][0, :, 0] / 10  # window starting one step before episode 0
    np.testing.assert_array_equal(first, [0, 0, 1, 2])
    np.testing.assert_array_equal(batch["mask"][0], [False, True, True, True])
    last = batch["action"][-1, :, 0] / 10  # last window of episode 1 (rows 5..7)
    np.testing.assert_array_equal(last, [6, 7, 7, 7])


def test_batches_cover_one_epoch_and_keep_a_short_dataset():
    ends, data = _store([4, 4])
    sampler = SequenceSampler({"x": data}, ends, horizon=2)
    rng = np.random.default_rng(0)
    sizes = [len(b["x"]) for b in sampler.batches(4, rng)]
    assert sizes == [4] and len(sampler) == 6
    # fewer windows than one batch: the epoch still yields them
    assert [len(b["x"]) for b in sampler.batches(100, rng)] == [6]


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 300), ratio=st.floats(0, 0.9), seed=st.integers(0, 100))
def test_split_by_episode(n, ratio, seed):
    train, val = split_episodes(n, ratio, seed)
    assert not (train & val).any() and (train | val).all() and train.any()
    if ratio > 0 and n > 1:
        assert val.any()
    np.testing.assert_array_equal(split_episodes(n, ratio, seed)[1], val)


def test_bad_arguments():
    with pytest.raises(ValueError):
        sequence_windows(np.array([3]), 0)
    with pytest.raises(ValueError):
        split_episodes(10, 1.0)
