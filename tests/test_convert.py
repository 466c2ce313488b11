"""protege-data convert: round trips through robomimic HDF5 and LeRobot v3.0, a dataset LeRobot
0.4.4 itself wrote, malformed sources (one error, no destination left), and, marked ``interop``
(not in the default run), robomimic's SequenceDataset and LeRobot 0.4.4 opening our exports in
their own environments."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from protege.data import edit
from protege.data.convert import ConvertError, convert
from protege.data.store import EpisodeStore, EpisodeWriter

BIN = Path(sys.executable).parent
TINY_LEROBOT = Path(__file__).parent / "data" / "lerobot_v3_tiny"


def _store(path, lengths=(6, 9, 7)):
    yy, xx = np.mgrid[:24, :32]
    with EpisodeWriter(path, fps=20, key_meta={"state": {"unit": "m", "frame": "base"}}) as w:
        for i, T in enumerate(lengths):
            t = np.arange(T, dtype=np.float32)
            frames = [np.stack([xx * 4, yy * 4, xx * 0 + 30], -1) + 9 * k + 30 * i for k in range(T)]
            w.add_episode({"wrist": np.asarray(frames, np.uint8),
                           "state": np.stack([t, -t, t * 0 + i], 1),
                           "keypoint": np.arange(T * 6, dtype=np.float32).reshape(T, 3, 2) + i,
                           "action": np.stack([t * 0.1, t * 0 + i], 1)},
                          task=f"task {i % 2}", operator="ana", success=bool(i % 2))
    return EpisodeStore(path)


def test_robomimic_round_trip_keeps_keys_values_masks_and_fps(tmp_path):
    src = _store(tmp_path / "s.zarr")
    _, _, report = convert(src.path, tmp_path / "d.hdf5", progress=False)
    assert any("rewards" in a for a in report.added) and any("mask/train" in a for a in report.added)
    with h5py.File(tmp_path / "d.hdf5") as f:
        assert sorted(f["data"]) == ["demo_0", "demo_1", "demo_2"] and f["data"].attrs["total"] == 22
        assert f["data/demo_1/obs/wrist"].shape == (9, 24, 32, 3) and f["data/demo_1/actions"].shape == (9, 2)
        np.testing.assert_array_equal(f["data/demo_1/next_obs/state"][:-1], f["data/demo_1/obs/state"][1:])
        assert list(f["data/demo_2/dones"]) == [0] * 6 + [1]
        split = {m: sorted(x.decode() for x in f[f"mask/{m}"]) for m in ("train", "valid")}
        assert len(split["valid"]) == 1 and sorted(split["train"] + split["valid"]) == ["demo_0", "demo_1", "demo_2"]
        assert json.loads(f["data"].attrs["env_args"])["env_kwargs"]["control_freq"] == 20
    back = EpisodeStore(convert(tmp_path / "d.hdf5", tmp_path / "back.zarr", progress=False) and tmp_path / "back.zarr")
    assert back.fps == 20 and list(back.episode_lengths) == [6, 9, 7]
    for e in range(3):
        a, b = src.episode(e), back.episode(e)
        for k in a:
            np.testing.assert_array_equal(b[k], a[k])
        assert b["done"][-1] == 1 and not b["reward"].any()
    masks = [m["masks"] for m in back.episode_meta]
    assert sorted(sum(masks, [])) == ["train", "train", "valid"]
    assert [(m["task"], m["operator"], m["success"]) for m in back.episode_meta] == [(m["task"], m["operator"], m["success"]) for m in src.episode_meta]
    assert back.spec("state").unit == "m" and back.spec("state").frame == "base"
    # and a second export keeps the split it was given, not a new one
    convert(back.path, tmp_path / "again.hdf5", progress=False)
    with h5py.File(tmp_path / "again.hdf5") as f:
        assert {m: sorted(x.decode() for x in f[f"mask/{m}"]) for m in ("train", "valid")} == split


def _robosuite_like(path):
    """A robomimic file as robosuite + dataset_states_to_obs.py write them (image obs, states, next_obs, masks)."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20, "robots": ["Panda"]}})
        for i, T in enumerate((5, 8)):
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = T
            g.attrs["model_file"] = f"<mujoco model='{i}'/>"
            g["actions"] = rng.normal(size=(T, 7))
            g["rewards"] = np.arange(T) == T - 1
            g["dones"] = (np.arange(T) == T - 1).astype(np.int64)
            g["states"] = rng.normal(size=(T, 32))
            g["obs/agentview_image"] = rng.integers(0, 256, (T, 16, 16, 3), dtype=np.uint8)
            g["obs/robot0_eef_pos"] = rng.normal(size=(T, 3))
            g["next_obs/robot0_eef_pos"] = rng.normal(size=(T, 3))
        data.attrs["total"] = 13
        f["mask/train"] = np.array([b"demo_0"])
        f["mask/valid"] = np.array([b"demo_1"])


def test_a_robosuite_style_file_imports_with_what_was_dropped_said(tmp_path, capsys):
    _robosuite_like(tmp_path / "lift.hdf5")
    assert subprocess.run([str(BIN / "protege-data"), "convert", str(tmp_path / "lift.hdf5"), str(tmp_path / "lift.zarr")],
                          capture_output=True, text=True, timeout=120).returncode == 0
    s = EpisodeStore(tmp_path / "lift.zarr")
    assert s.fps == 20 and s.keys == ["action", "agentview_image", "done", "reward", "robot0_eef_pos", "sim_state"]
    assert s.spec("agentview_image").is_image and s.spec("action").dtype == "float64" and s.spec("sim_state").shape == (32,)
    assert s.episode_meta == [{"robomimic_demo": "demo_0", "masks": ["train"], "model_file": "<mujoco model='0'/>"},
                              {"robomimic_demo": "demo_1", "masks": ["valid"], "model_file": "<mujoco model='1'/>"}]
    assert s.attrs["robomimic_env_args"]["env_kwargs"]["robots"] == ["Panda"]
    with h5py.File(tmp_path / "lift.hdf5") as f:
        np.testing.assert_array_equal(s.episode(1)["agentview_image"], f["data/demo_1/obs/agentview_image"][:])
    _, _, report = convert(tmp_path / "lift.zarr", tmp_path / "out.hdf5", progress=False)
    with h5py.File(tmp_path / "out.hdf5") as f:
        assert f["data/demo_1"].attrs["model_file"] == "<mujoco model='1'/>" and "Panda" in f["data"].attrs["env_args"]
        assert f["data/demo_0/states"].shape == (5, 32) and f["data/demo_0/rewards"].dtype == bool


def test_lerobot_round_trip_restores_keys_shapes_tasks_and_frames(tmp_path):
    src = _store(tmp_path / "s.zarr")
    _, _, report = convert(src.path, tmp_path / "lr", to="lerobot", progress=False, crf=0)
    info = json.loads((tmp_path / "lr/meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 20 and info["total_frames"] == 22
    assert set(info["features"]) >= {"observation.images.wrist", "observation.state", "observation.keypoint", "action"}
    assert info["features"]["observation.keypoint"]["shape"] == [6] and any("keypoint" in n for n in report.notes)
    assert any("operator" in n and "success" in n for n in report.notes)  # LeRobot keeps tasks only; ours in info.json
    back = EpisodeStore(convert(tmp_path / "lr", tmp_path / "back.zarr", progress=False) and tmp_path / "back.zarr")
    assert back.fps == 20 and list(back.episode_lengths) == [6, 9, 7] and sorted(back.keys) == sorted(src.keys)
    assert [m["task"] for m in back.episode_meta] == ["task 0", "task 1", "task 0"]
    assert [m["success"] for m in back.episode_meta] == [False, True, False] and back.spec("state").unit == "m"
    assert back.spec("keypoint").shape == (3, 2)
    for e in range(3):
        a, b = src.episode(e), back.episode(e)
        for k in ("state", "keypoint", "action"):
            np.testing.assert_array_equal(b[k], a[k])
        err = np.abs(b["wrist"].astype(int) - a["wrist"]).mean(axis=(1, 2, 3))
        assert err.max() < 3, err  # H.264 4:2:0 at crf 0: close to the pixels
        assert (np.abs(b["wrist"][1:].astype(int) - a["wrist"][:-1]).mean(axis=(1, 2, 3)) > 5).all()  # not off by one frame
    # our export again: the LeRobot names come back as they were
    convert(back.path, tmp_path / "lr2", to="lerobot", progress=False)
    assert set(json.loads((tmp_path / "lr2/meta/info.json").read_text())["features"]) == set(info["features"])


def test_a_dataset_lerobot_itself_wrote_imports(tmp_path):
    """tests/data/lerobot_v3_tiny: written by LeRobot 0.4.4 (tests/data/make_lerobot_v3_tiny.py), AV1 video."""
    convert(TINY_LEROBOT, tmp_path / "t.zarr", progress=False)
    s = EpisodeStore(tmp_path / "t.zarr")
    assert s.fps == 10 and list(s.episode_lengths) == [5, 6] and s.keys == ["action", "cam", "state"]
    assert [m["task"] for m in s.episode_meta] == ["task 0", "task 1"]
    assert s.attrs["lerobot"]["robot_type"] == "ur5e" and s.attrs["keys"]["state"]["names"] == ["x", "y", "z"]
    for e in range(2):
        ep = s.episode(e)
        np.testing.assert_array_equal(ep["state"][:, 0], np.arange(len(ep["state"])))
        np.testing.assert_array_equal(ep["action"], np.full((len(ep["action"]), 2), e))
        grey = ep["cam"].reshape(len(ep["cam"]), -1).mean(1)
        np.testing.assert_allclose(grey, 40 * np.arange(len(grey)), atol=3)  # frame t is grey 40 t


def test_pusht_converts_both_ways(tmp_path, pusht_path):
    p3 = edit.keep(pusht_path, [0, 1, 2], dest=tmp_path / "p3.zarr", progress=False)
    with pytest.raises(ConvertError, match="--fps"):
        convert(p3.path, tmp_path / "lr", to="lerobot", progress=False)
    assert not (tmp_path / "lr").exists()
    convert(p3.path, tmp_path / "lr", to="lerobot", fps=10, progress=False)
    back = EpisodeStore(convert(tmp_path / "lr", tmp_path / "back.zarr", progress=False) and tmp_path / "back.zarr")
    np.testing.assert_array_equal(back.read("state"), p3.read("state"))
    np.testing.assert_array_equal(back.read("keypoint"), p3.read("keypoint"))
    assert np.abs(back.read("img").astype(float) - p3.read("img")).mean() < 2.0  # float 0..255 pixels -> uint8 video
    convert(p3.path, tmp_path / "p3.hdf5", progress=False)
    with h5py.File(tmp_path / "p3.hdf5") as f:
        assert f["data/demo_2/obs/img"].dtype == np.uint8 and f["data/demo_2/obs/keypoint"].shape[1:] == (9, 2)


def test_malformed_sources_are_one_error_and_leave_nothing(tmp_path):
    cli = [str(BIN / "protege-data"), "convert"]
    with h5py.File(tmp_path / "empty.hdf5", "w") as f:
        f["x"] = 1
    (tmp_path / "junk.hdf5").write_bytes(b"not hdf5")
    bad_demo = tmp_path / "bad.hdf5"
    _robosuite_like(bad_demo)
    with h5py.File(bad_demo, "r+") as f:
        del f["data/demo_1/obs/robot0_eef_pos"]
        f["data/demo_1/obs/robot0_eef_pos"] = np.zeros((3, 3))  # 3 rows in an 8-step demo
    no_video = tmp_path / "novideo"
    shutil.copytree(TINY_LEROBOT, no_video)
    shutil.rmtree(no_video / "videos")
    old = tmp_path / "v21"
    shutil.copytree(TINY_LEROBOT, old)
    info = json.loads((old / "meta/info.json").read_text())
    (old / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    cut = tmp_path / "cut"
    shutil.copytree(TINY_LEROBOT, cut)
    f = next((cut / "data").rglob("*.parquet"))
    f.write_bytes(f.read_bytes()[:100])
    cases = [(tmp_path / "empty.hdf5", "no 'data' group"), (tmp_path / "junk.hdf5", "not an HDF5 file"),
             (bad_demo, "different lengths"), (no_video, "video file missing"), (old, "convert_dataset_v21_to_v30"),
             (cut, "cannot read the data parquet"), (tmp_path / "nothing", "no such file")]
    for src, msg in cases:
        dst = tmp_path / f"out-{src.name}.zarr"
        p = subprocess.run(cli + [str(src), str(dst)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr, (src, p.stderr)
        assert not dst.exists() and not list(tmp_path.glob(f".out-{src.name}*")), src
    p = subprocess.run(cli + [str(TINY_LEROBOT), str(tmp_path / "x.hdf5")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "go through a store" in p.stderr


def _other_python(var):
    exe = os.environ.get(var)
    if not exe:
        pytest.skip(f"set {var} to the interpreter of an environment that has it (see README, 'Data tools')")
    return exe


@pytest.mark.interop
def test_lerobot_0_4_4_opens_our_export(tmp_path, pusht_path):
    exe = _other_python("PROTEGE_LEROBOT_PYTHON")
    p3 = edit.keep(pusht_path, [0, 1, 2], dest=tmp_path / "p3.zarr", progress=False)
    convert(p3.path, tmp_path / "lr", to="lerobot", fps=10, progress=False)
    code = (
        "import sys, json, numpy as np\n"
        "from lerobot.datasets.lerobot_dataset import LeRobotDataset\n"
        "ds = LeRobotDataset('local/protege', root=sys.argv[1], video_backend='pyav')\n"
        "rows = [ds[i] for i in (0, 200, 419)]\n"
        "print(json.dumps({'episodes': ds.num_episodes, 'frames': ds.num_frames, 'fps': ds.fps,\n"
        "  'state': [r['observation.state'].tolist() for r in rows], 'img': [r['observation.images.img'].numpy().tolist() for r in rows],\n"
        "  'episode': [int(r['episode_index']) for r in rows], 'task': rows[0]['task']}))\n")
    out = subprocess.run([exe, "-c", code, str(tmp_path / "lr")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["episodes"] == 3 and got["frames"] == 420 and got["fps"] == 10 and got["episode"] == [0, 1, 2]
    np.testing.assert_allclose(got["state"], p3.read("state")[[0, 200, 419]], rtol=1e-6)
    img = np.asarray(got["img"]).transpose(0, 2, 3, 1) * 255  # LeRobot: (C, H, W) floats in [0, 1]
    assert np.abs(img - p3.read("img")[[0, 200, 419]]).mean() < 3


@pytest.mark.interop
def test_robomimic_sequence_dataset_opens_our_export(tmp_path, pusht_path):
    exe = _other_python("PROTEGE_ROBOMIMIC_PYTHON")
    p3 = edit.keep(pusht_path, [0, 1, 2], dest=tmp_path / "p3.zarr", progress=False)
    convert(p3.path, tmp_path / "p3.hdf5", progress=False)
    code = (
        "import sys, json, numpy as np\n"
        "import robomimic.utils.obs_utils as ObsUtils\n"
        "from robomimic.utils.dataset import SequenceDataset\n"
        "ObsUtils.initialize_obs_utils_with_obs_specs({'obs': {'low_dim': ['state'], 'rgb': ['img']}})\n"
        "out = {}\n"
        "for split in ('train', 'valid'):\n"
        "    ds = SequenceDataset(hdf5_path=sys.argv[1], obs_keys=['state', 'img'], dataset_keys=('actions', 'rewards', 'dones'),\n"
        "                         seq_length=16, frame_stack=2, filter_by_attribute=split)\n"
        "    it = ds[0]\n"
        "    out[split] = {'demos': ds.demos, 'n': len(ds), 'actions': np.asarray(it['actions']).tolist(),\n"
        "                  'img': float(np.asarray(it['obs']['img'], dtype=float).mean())}\n"
        "print(json.dumps(out))\n")
    out = subprocess.run([exe, "-c", code, str(tmp_path / "p3.hdf5")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert sorted(got["train"]["demos"] + got["valid"]["demos"]) == ["demo_0", "demo_1", "demo_2"]
    assert got["train"]["n"] + got["valid"]["n"] == 420
    first = got["train"]["demos"][0]
    e = int(first.split("_")[1])
    # frame_stack 2 pads the first window with a copy of step 0: 17 actions from the demo's first 16
    np.testing.assert_allclose(got["train"]["actions"], np.concatenate([p3.episode(e)["action"][:1], p3.episode(e)["action"][:16]]))


@pytest.mark.slow
@pytest.mark.parametrize("dst", [["out.hdf5"], ["lr", "--to", "lerobot", "--fps", "10"]])
def test_ctrl_c_stops_a_conversion_cleanly(tmp_path, pusht_path, dst):
    """Ctrl-C during a conversion (h5py's finalizers once swallowed it; zarr's event loop left
    'Task was destroyed' dumps) stops it at the next episode: exit 130, one line, nothing left."""
    import signal
    import time

    p = subprocess.Popen([str(BIN / "protege-data"), "convert", str(pusht_path), *dst], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(x.name.startswith(f".{dst[0]}.protege-convert") for x in tmp_path.iterdir()):
        assert time.monotonic() < deadline and p.poll() is None, p.communicate()
        time.sleep(0.05)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (out, err)
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    assert lines[-1] == f"protege-data convert: interrupted; nothing was written at {dst[0]}", err
    assert "Traceback" not in err and "Task was destroyed" not in err and "Exception ignored" not in err
    assert list(tmp_path.iterdir()) == []


def test_robosuites_own_demonstrations_keep_their_env_and_controller(tmp_path):
    """robosuite's collect_human_demonstrations writes data.attrs env, env_info (the controller
    configuration), repository_version, date; none may vanish unlisted, and env_name must not
    come back as 'protege'."""
    src = tmp_path / "demo.hdf5"
    info = {"robots": ["Panda"], "controller_configs": {"type": "OSC_POSE", "kp": 150}, "control_freq": 20}
    with h5py.File(src, "w") as f:
        d = f.create_group("data")
        d.attrs.update({"env": "Lift", "env_info": json.dumps(info), "repository_version": "1.4.1", "date": "12-07-2026"})
        for i in (1, 2):
            g = d.create_group(f"demo_{i}")
            g.attrs["model_file"] = "<mujoco model='base'/>"
            g.create_dataset("states", data=np.random.default_rng(i).normal(size=(5, 32)))
            g.create_dataset("actions", data=np.zeros((5, 7)))
    a, b, report = convert(src, tmp_path / "s.zarr", progress=False)
    s = EpisodeStore(tmp_path / "s.zarr")
    assert s.fps == 20 and s.attrs["robomimic_env_args"]["env_name"] == "Lift"
    assert s.attrs["robomimic_env_args"]["env_kwargs"]["controller_configs"]["type"] == "OSC_POSE"
    assert s.attrs["robomimic_attrs"]["repository_version"] == "1.4.1" and not report.dropped
    convert(tmp_path / "s.zarr", tmp_path / "back.hdf5", progress=False)
    with h5py.File(tmp_path / "back.hdf5") as f:
        env_args = json.loads(f["data"].attrs["env_args"])
        assert env_args["env_name"] == "Lift" and env_args["env_kwargs"] == info
        assert f["data"].attrs["env"] == "Lift" and json.loads(f["data"].attrs["env_info"]) == info
        assert f["data"].attrs["date"] == "12-07-2026" and f["data/demo_2"].attrs["model_file"] == "<mujoco model='base'/>"
