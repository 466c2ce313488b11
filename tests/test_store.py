import numpy as np
import pytest
import zarr
from hypothesis import given, settings, strategies as st

from protege.data.store import EpisodeStore, EpisodeWriter, StoreError, describe


def test_opens_diffusion_policy_pusht_store_as_is(pusht_path):
    store = EpisodeStore(pusht_path)
    assert store.zarr_format == 2
    assert store.n_episodes == 206 and store.n_steps == 25650
    assert store.keys == ["action", "img", "keypoint", "n_contacts", "state"]
    assert store.spec("img").shape == (96, 96, 3) and store.spec("img").is_image
    assert store.spec("keypoint").shape == (9, 2)
    assert store.episode_lengths.sum() == 25650 and store.episode_lengths.min() > 0
    ep = store.episode(-1, ["state", "action"])
    assert len(ep["state"]) == store.episode_lengths[-1]
    np.testing.assert_array_equal(ep["action"], store.read("action")[store.episode_starts[-1]:])
    d = describe(store)
    assert d["episodes"] == 206 and d["keys"]["action"]["shape"] == [2]
    with pytest.raises(IndexError):
        store.episode(206)


def _random_episode(rng, T):
    return {
        "img": rng.integers(0, 256, (T, 8, 10, 3), dtype=np.uint8),
        "state": rng.normal(size=(T, 4)).astype(np.float32),
        "action": rng.normal(size=(T, 2)).astype(np.float32),
    }


@settings(max_examples=10, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=5), seed=st.integers(0, 2**16))
def test_writer_round_trips_exactly(tmp_path_factory, lengths, seed):
    rng = np.random.default_rng(seed)
    path = tmp_path_factory.mktemp("store") / "demo.zarr"
    writer = EpisodeWriter(path, fps=10, key_meta={"state": {"unit": "m", "frame": "base"}})
    episodes = [_random_episode(rng, T) for T in lengths]
    for i, ep in enumerate(episodes):
        assert writer.add_episode(ep) == i
    store = EpisodeStore(path)
    assert store.zarr_format == 3 and store.fps == 10
    assert list(store.episode_lengths) == lengths
    assert store.spec("state").unit == "m" and store.spec("state").frame == "base"
    assert store._array("img").chunks == (1, 8, 10, 3)  # one frame per chunk
    for i, ep in enumerate(episodes):
        got = store.episode(i)
        for k in ep:
            np.testing.assert_array_equal(got[k], ep[k])
            assert got[k].dtype == ep[k].dtype


def test_reopened_writer_appends(tmp_path):
    rng = np.random.default_rng(0)
    EpisodeWriter(tmp_path / "s.zarr").add_episode(_random_episode(rng, 5))
    EpisodeWriter(tmp_path / "s.zarr").add_episode(_random_episode(rng, 7))
    assert list(EpisodeStore(tmp_path / "s.zarr").episode_ends) == [5, 12]


def test_rows_past_the_last_episode_end_are_not_visible(tmp_path):
    """episode_ends is the commit record: data written without its commit does not exist."""
    rng = np.random.default_rng(0)
    w = EpisodeWriter(tmp_path / "s.zarr")
    w.add_episode(_random_episode(rng, 5))
    for k, a in zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")["data"].arrays():
        a.resize((9, *a.shape[1:]))  # a crash after writing rows, before the commit
    store = EpisodeStore(tmp_path / "s.zarr")
    assert store.n_steps == 5 and len(store.read("state")) == 5


def test_writer_rejects_mismatched_episodes(tmp_path):
    rng = np.random.default_rng(0)
    w = EpisodeWriter(tmp_path / "s.zarr")
    w.add_episode(_random_episode(rng, 5))
    bad = _random_episode(rng, 5)
    bad["state"] = bad["state"][:, :3]
    with pytest.raises(StoreError, match="per-step shape"):
        w.add_episode(bad)
    with pytest.raises(StoreError, match="differ in length"):
        w.add_episode({**_random_episode(rng, 5), "action": np.zeros((4, 2), np.float32)})
    with pytest.raises(StoreError, match="keys"):
        w.add_episode({"state": np.zeros((3, 4), np.float32)})
    assert EpisodeStore(tmp_path / "s.zarr").n_episodes == 1  # nothing half-written became visible


def test_clear_errors_for_things_that_are_not_stores(tmp_path):
    with pytest.raises(StoreError, match="no such"):
        EpisodeStore(tmp_path / "missing.zarr")
    (tmp_path / "notzarr").mkdir()
    with pytest.raises(StoreError):
        EpisodeStore(tmp_path / "notzarr")
    g = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    g.create_array("x", shape=(3,), dtype="f4")
    with pytest.raises(StoreError, match="episode_ends"):
        EpisodeStore(tmp_path / "plain.zarr")


def test_truncated_data_is_reported(tmp_path):
    rng = np.random.default_rng(0)
    EpisodeWriter(tmp_path / "s.zarr").add_episode(_random_episode(rng, 6))
    a = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")["data/state"]
    a.resize((3, 4))
    with pytest.raises(StoreError, match="truncated"):
        EpisodeStore(tmp_path / "s.zarr")


def test_streamed_episodes_commit_discard_and_metadata(tmp_path):
    rng = np.random.default_rng(1)
    w = EpisodeWriter(tmp_path / "s.zarr", fps=10)
    a, b, c = (_random_episode(rng, T) for T in (300, 4, 6))
    for i in range(0, 300, 7):  # step by step, as a recorder does
        w.add_steps({k: v[i : i + 7] for k, v in a.items()})
    assert w.commit(task="lift", success=True) == 0
    w.add_steps(b)
    w.discard()  # the operator threw this one away
    w.add_steps(c)
    w.commit(task="lift", success=False)
    w.add_steps(b)  # a crash here: never committed
    store = EpisodeStore(tmp_path / "s.zarr")
    assert list(store.episode_lengths) == [300, 6]
    np.testing.assert_array_equal(store.episode(1)["img"], c["img"])
    assert [e["success"] for e in store.episode_meta] == [True, False]
    assert store._array("state").shape[0] > store.n_steps  # uncommitted rows and capacity remain
    w.close()
    assert EpisodeStore(tmp_path / "s.zarr")._array("state").shape[0] == 306


def test_episode_metadata_lives_in_meta_arrays_and_old_stores_still_read(tmp_path):
    rng = np.random.default_rng(2)
    w = EpisodeWriter(tmp_path / "s.zarr", fps=10)
    w.add_episode(_random_episode(rng, 3), task="lift", success=True)
    w.add_episode(_random_episode(rng, 4), operator="ana", camera={"fx": 60.5})
    store = EpisodeStore(tmp_path / "s.zarr")
    assert "episodes" not in store.attrs and store.schema_version == 2
    assert store.episode_meta == [{"task": "lift", "success": True}, {"operator": "ana", "camera": {"fx": 60.5}}]
    with pytest.raises(StoreError, match="JSON"):
        w.add_steps(_random_episode(rng, 2))
        w.commit(when=object())

    # a schema-1 store: metadata in one growing attribute
    old = tmp_path / "old.zarr"
    w = EpisodeWriter(old)
    w.add_episode(_random_episode(rng, 3))
    g = zarr.open_group(str(old), mode="r+")
    del g["meta/episode_info"]
    g.attrs.update({"schema_version": 1, "episodes": [{"index": 0, "task": "old", "success": False}]})
    assert EpisodeStore(old).episode_meta == [{"task": "old", "success": False}]
    w = EpisodeWriter(old)  # appending moves the metadata into meta/
    w.add_episode(_random_episode(rng, 2), task="new")
    store = EpisodeStore(old)
    assert "episodes" not in store.attrs and "episode_info" in store.root["meta"]
    assert store.episode_meta == [{"task": "old", "success": False}, {"task": "new"}]


def test_diffusion_policy_store_has_empty_metadata(pusht_path):
    meta = EpisodeStore(pusht_path).episode_meta
    assert len(meta) == 206 and meta[0] == {}
