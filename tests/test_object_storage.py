"""Stores in object storage (s3://, through zarr's fsspec stores and s3fs) against moto's S3 server
on loopback: open, info, validate, convert from it, train a few steps; edits are refused."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

moto_server = pytest.importorskip("moto.server")
pytest.importorskip("s3fs")

from protege.data.store import EpisodeStore, EpisodeWriter  # noqa: E402

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    srv.start()
    host, port = srv.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("lab-data")
    src = tmp_path_factory.mktemp("s3") / "pusht_like.zarr"
    rng = np.random.default_rng(0)
    with EpisodeWriter(src, fps=10, key_meta={"state": {"unit": "px"}}) as w:
        for n in (30, 40, 35, 45):
            w.add_episode({"state": rng.uniform(0, 512, (n, 5)).astype(np.float32),
                           "keypoint": rng.uniform(0, 512, (n, 9, 2)).astype(np.float32),
                           "action": rng.uniform(0, 512, (n, 2)).astype(np.float32)})
    fs.put(str(src), "lab-data/pusht_like.zarr", recursive=True)
    yield "s3://lab-data/pusht_like.zarr", {**os.environ, **env}, src
    srv.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def cli(env, *args, check=True):
    p = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return p


def test_open_info_validate_and_convert_a_store_in_s3(s3, tmp_path):
    url, env, local = s3
    s = EpisodeStore(url)
    assert s.n_episodes == 4 and s.fps == 10 and str(s.path) == url
    np.testing.assert_array_equal(s.episode(2)["state"], EpisodeStore(local).episode(2)["state"])
    assert "episodes 4, steps 150" in cli(env, "protege-data", "info", url).stdout
    p = cli(env, "protege-data", "validate", url)
    assert "OK (4 episodes, 150 steps)" in p.stdout and "CRC-32C" in p.stdout
    cli(env, "protege-data", "convert", url, str(tmp_path / "copy.hdf5"))
    assert (tmp_path / "copy.hdf5").stat().st_size > 1000
    bad = cli(env, "protege-data", "delete", url, "1", "--in-place", check=False)
    assert bad.returncode == 2 and "remote store is read-only" in bad.stderr
    missing = cli(env, "protege-data", "info", "s3://lab-data/none.zarr", check=False)
    assert missing.returncode == 2 and "no such episode store" in missing.stderr


@pytest.mark.slow
def test_train_a_few_steps_from_s3(s3, tmp_path):
    url, env, _ = s3
    cli(env, "protege-train", "task=pusht_state", f"dataset={url}", f"run_dir={tmp_path / 'run'}", "train.steps=2",
        "train.batch_size=8", "train.val_ratio=0", "train.progress=false", "policy.unet.down_dims=[16,32,64]")
    assert (tmp_path / "run" / "checkpoints" / "latest.pt").exists()


@pytest.mark.slow
def test_images_read_from_s3_during_training_are_kept_in_a_local_chunk_cache(s3, tmp_path):
    """data.in_memory=false on an s3:// store: the image chunks a run reads are kept locally; the
    same run again reads none of them from the bucket (the S3 server's request log says so)."""
    import logging

    import fsspec

    _, env, _ = s3
    src = tmp_path / "images.zarr"
    rng = np.random.default_rng(1)
    with EpisodeWriter(src, fps=10) as w:
        for n in (20, 25):
            w.add_episode({"img": rng.integers(0, 255, (n, 96, 96, 3), dtype=np.uint8),
                           "state": rng.uniform(0, 512, (n, 5)).astype(np.float32),
                           "action": rng.uniform(0, 512, (n, 2)).astype(np.float32)})
    fsspec.filesystem("s3", skip_instance_cache=True).put(str(src), "lab-data/images.zarr", recursive=True)
    url, cache = "s3://lab-data/images.zarr", tmp_path / "chunks"

    class Requests(logging.Handler):  # moto's server (in this process) logs every request it serves
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    def run(name):
        seen = Requests()
        logging.getLogger("werkzeug").addHandler(seen)
        try:
            p = cli(env, "protege-train", "task=pusht_image", f"dataset={url}", f"run_dir={tmp_path / name}", "train.steps=2",
                    "train.batch_size=4", "train.val_ratio=0", "train.progress=false", "data.in_memory=false",
                    "data.workers=1", f"data.chunk_cache={cache}", "policy.unet.down_dims=[16,32,64]")
        finally:
            logging.getLogger("werkzeug").removeHandler(seen)
        chunk_gets = [ln for ln in seen.lines if "GET /lab-data/images.zarr/data/img/c/" in ln]
        assert (tmp_path / name / "checkpoints" / "latest.pt").exists()
        return p, chunk_gets

    first, gets1 = run("a")
    assert f"are kept in {cache}" in first.stdout + first.stderr and "Warning" not in first.stderr
    assert len(gets1) >= 3 and len(list(cache.iterdir())) >= 45  # every image chunk read (the damage check reads them all)
    second, gets2 = run("b")
    assert gets2 == []  # every chunk from the cache, none from the bucket
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    cached = {f.read_bytes() for f in cache.iterdir()}
    chunks = [k for k in fs.find("lab-data/images.zarr/data/img") if "/c/" in k]
    assert len(chunks) == 45 and all(fs.cat_file(k) in cached for k in chunks)  # byte for byte what the bucket holds
