"""Damage is found and named (validate), repaired by dropping the damaged episodes, and every
edit (delete, keep, trim, merge, relabel) is atomic: a store killed mid-edit still validates."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from protege.data import edit
from protege.data.cli import main as data_cli
from protege.data.store import EpisodeStore, EpisodeWriter, StoreError
from protege.data.validate import validate

BIN = Path(sys.executable).parent


def _episode(rng, T, i):
    return {"img": rng.integers(0, 256, (T, 12, 16, 3), dtype=np.uint8),
            "state": rng.normal(size=(T, 3)).astype(np.float32),
            "action": np.full((T, 2), i, np.float32)}  # the action says which episode a row came from


def _store(path, lengths=(5, 7, 6, 4), codec="lossless", seed=0):
    rng = np.random.default_rng(seed)
    eps = [_episode(rng, T, i) for i, T in enumerate(lengths)]
    with EpisodeWriter(path, fps=10, key_meta={"state": {"unit": "m", "frame": "base"}}, image_codec=codec) as w:
        for i, ep in enumerate(eps):
            w.add_episode(ep, task="lift", operator=f"op{i}", success=bool(i % 2))
    return eps


def _chunk(path, key, *index):
    return Path(path) / "data" / key / "c" / Path(*map(str, index))


@pytest.mark.parametrize("codec", ["lossless", "jpeg:90"])
def test_validate_names_every_missing_truncated_or_corrupt_chunk(tmp_path, codec):
    path = tmp_path / "s.zarr"
    _store(path, codec=codec)
    assert validate(EpisodeStore(path), progress=False).ok
    _chunk(path, "img", 6, 0, 0, 0).unlink()  # episode 1 step 1: zarr alone would read a black frame
    assert not EpisodeStore(path).episode(1)["img"][1].any()
    f = _chunk(path, "img", 9, 0, 0, 0)  # episode 1 step 4, cut short
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    f = _chunk(path, "img", 13, 0, 0, 0)  # episode 2 step 1, one flipped byte
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))
    report = validate(EpisodeStore(path), progress=False)
    found = sorted((p.kind, p.key, p.episodes) for p in report.problems)
    assert found == [("missing chunk", "img", (1,)), ("undecodable chunk", "img", (1,)), ("undecodable chunk", "img", (2,))]
    text = "\n".join(map(str, report.problems))
    assert "episode 1 step 1" in text and "episode 1 step 4" in text and "episode 2 step 1" in text
    assert report.damaged_episodes == [1, 2]


def test_validate_finds_non_finite_values_cut_arrays_and_lost_metadata(tmp_path):
    path = tmp_path / "s.zarr"
    _store(path)
    g = zarr.open_group(str(path), mode="r+")
    state = g["data/state"]
    state[13] = np.nan  # episode 2 step 1
    g["data/action"].resize((20, 2))  # the last 2 committed rows (episode 3 steps 2, 3) are gone
    report = validate(EpisodeStore(path, check_rows=False), progress=False)
    kinds = {(p.kind, p.key): p for p in report.problems}
    assert kinds[("non-finite value", "state")].episodes == (2,)
    assert "episode 2 step 1" in str(kinds[("non-finite value", "state")])
    assert kinds[("layout", "action")].episodes == (3,) and "episode 3 step 2 to episode 3 step 3" in str(kinds[("layout", "action")])
    with pytest.raises(StoreError, match="truncated"):  # readers refuse it outright
        EpisodeStore(path)
    del g["meta/episode_info"]
    g.create_array("meta/episode_info", shape=(1,), dtype=str)[0] = "{not json"
    report = validate(EpisodeStore(path, check_rows=False), progress=False)
    assert any(p.kind == "metadata" for p in report.problems)


def test_repair_drops_the_damaged_episodes_and_keeps_the_rest_exactly(tmp_path, capsys):
    path = tmp_path / "s.zarr"
    eps = _store(path)
    _chunk(path, "img", 6, 0, 0, 0).unlink()  # episode 1
    assert data_cli(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "data/img: missing chunk" in out and "episode 1 step 1" in out and "damaged episodes: 1" in out
    assert data_cli(["repair", str(path)]) == 1  # not a terminal and no --yes: asks, drops nothing
    assert EpisodeStore(path).n_episodes == 4
    assert data_cli(["repair", str(path), "--yes"]) == 0
    store = EpisodeStore(path)
    assert store.n_episodes == 3 and validate(store, progress=False).ok
    for new, old in enumerate([0, 2, 3]):
        got = store.episode(new)
        for k in eps[old]:
            np.testing.assert_array_equal(got[k], eps[old][k])
    assert [m["operator"] for m in store.episode_meta] == ["op0", "op2", "op3"]
    assert store.spec("state").unit == "m" and store.fps == 10
    assert data_cli(["validate", str(path)]) == 0


def test_edits_delete_keep_trim_merge_relabel(tmp_path):
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    eps_a = _store(a, lengths=(5, 7, 6, 4), codec="jpeg:90")
    eps_b = _store(b, lengths=(3, 8), codec="jpeg:90", seed=1)

    def actions(store):
        return [int(store.episode(i)["action"][0, 0]) for i in range(store.n_episodes)]

    s = edit.delete(a, [1, 3], progress=False)
    assert actions(s) == [0, 2] and list(s.episode_lengths) == [5, 6]
    assert s.attrs["keys"]["img"]["codec"] == "jpeg:90"  # the image codec is kept
    np.testing.assert_array_equal(s.episode(1)["state"], eps_a[2]["state"])
    s = edit.trim(a, 1, start=1, end=-1, progress=False)
    np.testing.assert_array_equal(s.episode(1)["state"], eps_a[2]["state"][1:-1])
    s = edit.merge(a, b, progress=False)
    assert list(s.episode_lengths) == [5, 4, 3, 8] and [m["operator"] for m in s.episode_meta] == ["op0", "op2", "op0", "op1"]
    np.testing.assert_array_equal(s.episode(3)["state"], eps_b[1]["state"])
    s = edit.keep(a, [0, 3], progress=False)
    assert list(s.episode_lengths) == [5, 8]
    inodes = lambda: {str(p): p.stat().st_ino for p in (a / "data").rglob("*") if p.is_file() and p.name != "zarr.json"}  # noqa: E731
    data_before = inodes()
    s = edit.relabel(a, [1], {"success": False})
    assert [m["success"] for m in s.episode_meta] == [False, False] and s.episode_meta[1]["operator"] == "op1"
    assert inodes() == data_before and len(data_before) > 10  # chunk files linked, not copied
    assert validate(s, progress=False).ok
    assert not list(tmp_path.glob(".*protege-edit*"))  # no scratch left behind

    c = tmp_path / "c.zarr"
    with EpisodeWriter(c, fps=10) as w:
        w.add_episode({"state": np.zeros((2, 4), np.float32)})
    with pytest.raises(StoreError, match="schemas differ"):
        edit.merge(a, c)
    with pytest.raises(ValueError, match="out of range"):
        edit.parse_episodes("0,9", 2)
    assert edit.parse_episodes("4,0-2,1", 5) == [0, 1, 2, 4]
    with pytest.raises(StoreError, match="no episode"):
        edit.delete(a, [0, 1])


KILLED = textwrap.dedent("""
    import sys
    from protege.data import edit
    print("go", flush=True)
    edit.delete(sys.argv[1], [0], progress=False)
    print("done", flush=True)
""")


def test_an_edit_killed_at_any_moment_leaves_a_store_that_validates(tmp_path):
    path = tmp_path / "s.zarr"
    _store(path, lengths=(40,) * 12)
    reference = tmp_path / "ref.zarr"
    shutil.copytree(path, reference)
    outcomes = set()
    for delay in (0.05, 0.3, 0.6, 1.0, 1.5, 2.5, 4.0):
        p = subprocess.Popen([sys.executable, "-c", KILLED, str(path)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "go"
        time.sleep(delay)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        store = EpisodeStore(path)
        assert validate(store, progress=False).ok
        assert store.n_episodes in (12, 11)
        outcomes.add(store.n_episodes)
        if store.n_episodes == 11:  # it finished: start again from the full store
            shutil.rmtree(path)
            shutil.copytree(reference, path)
    assert 12 in outcomes  # at least one kill landed mid-edit
    edit.delete(path, [0], progress=False)  # the next edit clears the killed ones' scratch folders
    assert not list(tmp_path.glob(".s.zarr.protege-edit-*"))


def test_the_cli_edits_and_reports_bad_input_as_one_line(tmp_path):
    path = tmp_path / "s.zarr"
    _store(path)
    cli = [str(BIN / "protege-data")]
    p = subprocess.run(cli + ["delete", str(path), "1-2"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--in-place" in p.stderr and EpisodeStore(path).n_episodes == 4  # says where, drops nothing
    p = subprocess.run(cli + ["keep", str(path), "0,3", "--out", str(tmp_path / "two.zarr")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and EpisodeStore(path).n_episodes == 4 and EpisodeStore(tmp_path / "two.zarr").n_episodes == 2
    p = subprocess.run(cli + ["delete", str(path), "1-2", "--in-place"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "4 -> 2 episodes" in p.stdout
    p = subprocess.run(cli + ["relabel", str(path), "0", "--success", "no"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and EpisodeStore(path).episode_meta[0]["success"] is False
    for args, msg in ((["delete", str(path), "7", "--in-place"], "out of range"), (["keep", str(path), "x", "--in-place"], "bad episode list"),
                      (["info", str(tmp_path / "none.zarr")], "no such episode store"),
                      (["trim", str(path), "0", "--start", "5", "--end", "2", "--in-place"], "empty")):
        p = subprocess.run(cli + args, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1
    p = subprocess.run(cli + ["delete", str(path), "7", "--in-place", "--traceback"], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "Traceback" in p.stderr


def _damaged_pusht(pusht_path, tmp_path):
    """Six PushT episodes; episode 2 has a NaN action, episode 0 lost an image chunk."""
    path = tmp_path / "pusht6.zarr"
    src = EpisodeStore(pusht_path)  # six episodes in protege's zarr 3 layout (checksummed chunks: a NaN is the data's)
    w = edit._writer_like(src, path)
    edit._copy_episodes(src, w, [(e, 0, int(src.episode_lengths[e])) for e in range(6)], src.episode_meta, False)
    w.close()
    store = EpisodeStore(path)
    g = zarr.open_group(str(path), mode="r+")
    g["data/action"][int(store.episode_starts[2]) + 3] = np.nan
    victim = _chunk(path, "img", 0, 0, 0, 0)
    victim.unlink()
    return path


def test_training_data_refuses_damage_in_the_tasks_keys_or_skips_it(tmp_path, pusht_path):
    from protege.data.dataset import load_task_data

    path = _damaged_pusht(pusht_path, tmp_path)
    state = {"obs": {"s": {"source": "state"}}, "action": {"source": "action"}}
    with pytest.raises(StoreError, match=r"damaged episode.*data/action: non-finite value.*episode 2 step 3.*skip_damaged"):
        load_task_data(path, state["obs"], state["action"])
    data = load_task_data(path, state["obs"], state["action"], skip_damaged=True)
    assert data.skipped == [2] and len(data.episode_ends) == 5  # the image damage is not in this task's keys
    store = EpisodeStore(path)
    np.testing.assert_array_equal(data.arrays["s"][: data.episode_ends[0]], store.episode(0)["state"])
    np.testing.assert_array_equal(data.arrays["action"][data.episode_ends[1]: data.episode_ends[2]], store.episode(3)["action"])
    image = {"img": {"source": "img", "type": "rgb"}}
    data = load_task_data(path, image, state["action"], skip_damaged=True)
    assert data.skipped == [0, 2] and np.isfinite(data.arrays["action"]).all()


@pytest.mark.slow
def test_protege_train_names_the_damage_and_trains_when_told_to_skip(tmp_path, pusht_path):
    path = _damaged_pusht(pusht_path, tmp_path)
    cmd = [str(BIN / "protege-train"), "task=pusht_state", f"dataset={path}", f"run_dir={tmp_path / 'run'}", "train.steps=2",
           "policy.unet.down_dims=[32,64,128]", "train.batch_size=8", "train.progress=false", "train.val_every=0"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and "episode 2 step 3" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run(cmd + ["data.skip_damaged=true"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "skipping 1 damaged episode(s) [2]" in p.stderr and (tmp_path / "run/checkpoints/latest.pt").exists()


def test_all_zero_data_is_written_and_validates_and_a_cut_array_is_repaired(tmp_path):
    path = tmp_path / "z.zarr"
    w = EpisodeWriter(path, fps=10)
    for i in range(4):  # reopened arrays too must write chunks that are all fill value
        w.add_episode({"a": np.full((5, 2), i, np.float32), "grip": np.zeros((5, 1), np.float32),
                       "img": np.zeros((5, 4, 4, 3), np.uint8)})
    w.close()
    assert validate(EpisodeStore(path), progress=False).ok
    zarr.open_group(str(path), mode="r+")["data/a"].resize((17, 2))  # the last 3 rows gone
    report = validate(EpisodeStore(path, check_rows=False), progress=False)
    assert [(p.kind, p.episodes) for p in report.problems] == [("layout", (3,))]
    assert data_cli(["repair", str(path), "--yes"]) == 0
    store = EpisodeStore(path)
    assert store.n_episodes == 3 and validate(store, progress=False).ok

    # a zarr 3 store that does not promise every chunk (schema 1): a missing low-dim chunk may be
    # all zeros legitimately (a note); a missing image is still damage
    g = zarr.open_group(str(path), mode="r+")
    g.attrs["schema_version"] = 1
    (path / "data" / "grip" / "c" / "0" / "0").unlink()
    _chunk(path, "img", 2, 0, 0, 0).unlink()
    report = validate(EpisodeStore(path), progress=False)
    assert [(p.kind, p.key) for p in report.problems] == [("missing chunk", "img")]
    assert any("data/grip" in n and "skips chunks" in n for n in report.notes)
