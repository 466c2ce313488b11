"""Images read from the store's chunks as windows are drawn (data.in_memory=false): the same windows
as the in-memory path, a bounded chunk cache, and a training run that uses it."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protege.data.dataset import load_task_data, load_training_data
from protege.data.lazy import LazyArray
from protege.data.store import EpisodeWriter

BIN = Path(sys.executable).parent
OBS = {"image": {"source": "img", "type": "rgb"}, "agent_pos": {"source": "state", "slice": [0, 2]}}
ACT = {"source": "action"}


def make(path, lengths=(7, 11, 5, 9), seed=0):
    rng = np.random.default_rng(seed)
    with EpisodeWriter(path, fps=10) as w:
        for n in lengths:
            w.add_episode({"img": rng.integers(0, 256, (n, 12, 12, 3), dtype=np.uint8),
                           "state": rng.normal(size=(n, 4)).astype(np.float32),
                           "action": rng.normal(size=(n, 2)).astype(np.float32)})
    return path


def test_lazy_windows_equal_the_in_memory_ones(tmp_path):
    a, b = make(tmp_path / "a.zarr"), make(tmp_path / "b.zarr", (6, 8), seed=1)
    eager = load_training_data([str(a), str(b)], OBS, ACT, weights=[1.0, 1.0])
    lazy = load_training_data([str(a), str(b)], OBS, ACT, weights=[1.0, 1.0], lazy_images=True, cache_mb=0.0001)
    assert isinstance(lazy.arrays["image"], LazyArray) and isinstance(lazy.arrays["agent_pos"], np.ndarray)
    assert lazy.arrays["image"].shape == eager.arrays["image"].shape and lazy.shape_meta == eager.shape_meta
    se, _ = eager.samplers(4, 2, 1, 3, 0.0, 0)
    sl, _ = lazy.samplers(4, 2, 1, 3, 0.0, 0)
    ids = np.random.default_rng(0).integers(0, len(se), 64)
    be, bl = se.sample(ids), sl.sample(ids)
    for k in be:
        np.testing.assert_array_equal(be[k], bl[k])
    img = lazy.arrays["image"]
    assert img.reads >= 2 and len(img._cache) == 1  # a cache of one chunk when the budget holds less


def test_lazy_rows_of_skipped_episodes_stay_out(tmp_path):
    import zarr

    path = make(tmp_path / "c.zarr")
    zarr.open_group(str(path), mode="r+")["data/action"][8] = np.nan  # episode 1 damaged
    eager = load_task_data(path, OBS, ACT, skip_damaged=True)
    lazy = load_task_data(path, OBS, ACT, skip_damaged=True, lazy_images=True)
    assert eager.skipped == lazy.skipped == [1]
    np.testing.assert_array_equal(eager.arrays["image"], lazy.arrays["image"][np.arange(len(lazy.arrays["image"]))])
    with pytest.raises(IndexError):
        lazy.arrays["image"][[len(lazy.arrays["image"])]]


@pytest.mark.slow
def test_training_reads_images_from_the_store_in_workers(tmp_path, pusht_path):
    p = subprocess.run([str(BIN / "protege-train"), "task=pusht_image", f"dataset={pusht_path}", f"run_dir={tmp_path / 'run'}",
                        "max_episodes=4", "train.steps=3", "train.batch_size=8", "train.val_ratio=0", "train.progress=false",
                        "policy.unet.down_dims=[16,32,64]", "policy.image_encoder.width=8", "data.in_memory=false",
                        "data.workers=2", "data.cache_mb=64"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "read from the store's chunks as windows are drawn" in p.stdout + p.stderr
    assert (tmp_path / "run" / "checkpoints" / "latest.pt").exists()
