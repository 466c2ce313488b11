import numpy as np
import pytest
import torch

from protege.data.dataset import load_task_data, obs_from_step
from protege.data.stats import compute_stats
from protege.policies.normalizer import Normalizer


def test_stats_match_numpy_in_one_chunked_pass():
    x = np.random.default_rng(0).normal(3, 2, size=(1000, 3)).astype(np.float32)
    s = compute_stats(x, chunk=97)
    np.testing.assert_allclose(s["min"], x.min(0))
    np.testing.assert_allclose(s["max"], x.max(0))
    np.testing.assert_allclose(s["mean"], x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(s["std"], x.std(0), rtol=1e-4)


def test_stats_reject_nan_with_its_row():
    x = np.zeros((10, 2), np.float32)
    x[7, 1] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        compute_stats(x, chunk=3)


def test_normalizer_maps_range_to_unit_interval_and_back():
    x = np.array([[0.0, 5.0, 1.0], [10.0, 7.0, 1.0], [5.0, 6.0, 1.0]], np.float32)  # last dim constant
    norm = Normalizer({"a": compute_stats(x)}, image_keys=["img"])
    y = norm.normalize("a", torch.from_numpy(x))
    np.testing.assert_allclose(y[:, :2].min(0).values, [-1, -1], atol=1e-6)
    np.testing.assert_allclose(y[:, :2].max(0).values, [1, 1], atol=1e-6)
    np.testing.assert_allclose(y[:, 2], 0, atol=1e-6)
    np.testing.assert_allclose(norm.unnormalize("a", y), x, atol=1e-5)
    # a constant dimension comes back as the constant whatever a policy put there; the others are untouched
    noisy = y.clone()
    noisy[:, 2] = torch.tensor([-1.0, 0.3, 1.0])
    back = norm.unnormalize("a", noisy)
    np.testing.assert_allclose(back[:, 2], 1.0, atol=1e-6)
    np.testing.assert_allclose(back[:, :2], x[:, :2], atol=1e-5)
    img = torch.rand(2, 3, 4, 4)
    np.testing.assert_allclose(norm.normalize("img", img), img * 2 - 1)
    # the normalizer's buffers rebuild it exactly (what a checkpoint relies on)
    again = Normalizer(norm.stats(), norm.image_keys)
    again.load_state_dict(norm.state_dict())
    np.testing.assert_allclose(again.normalize("a", torch.from_numpy(x)), y)
    with pytest.raises(KeyError):
        norm.normalize("nope", y)


def test_task_data_from_the_pusht_store(pusht_path):
    spec = {"agent_pos": {"source": "state", "slice": [0, 2]}, "image": {"source": "img", "type": "rgb"}}
    data = load_task_data(pusht_path, spec, {"source": "action"}, max_episodes=2)
    n = int(data.episode_ends[-1])
    assert data.arrays["image"].shape == (n, 96, 96, 3) and data.arrays["image"].dtype == np.uint8
    assert data.arrays["agent_pos"].shape == (n, 2) and data.arrays["action"].dtype == np.float32
    assert set(data.stats) == {"agent_pos", "action"} and data.image_keys == ["image"]
    assert data.shape_meta["obs"]["image"] == {"shape": [96, 96, 3], "type": "rgb"}
    # a live step in the store's schema maps to the same policy keys
    step = obs_from_step({"img": np.zeros((96, 96, 3), np.float32), "state": np.arange(5.0)}, spec)
    np.testing.assert_array_equal(step["agent_pos"], [0, 1])
    with pytest.raises(KeyError, match="lacks"):
        obs_from_step({"state": np.arange(5.0)}, spec)
