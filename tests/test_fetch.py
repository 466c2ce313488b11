"""protege-data fetch: download from a local HTTP server, check the SHA-256, unpack, open; a local
copy instead; offline and corrupt downloads fail clearly and leave nothing behind; dataset=pusht."""

import functools
import hashlib
import os
import http.server
import subprocess
import threading
import zipfile

import numpy as np
import zarr
import pytest

from protege.data import fetch as fetch_mod
from protege.data.fetch import DATASETS, Dataset, FetchError, fetch, resolve_store
from protege.data.store import EpisodeStore
from test_cli import BIN, ENV


@pytest.fixture
def archive(tmp_path, monkeypatch):
    """A small store zipped as pusht.zip lays PushT out (pusht/pusht_cchi_v7_replay.zarr), registered
    under the pusht name with its own checksum."""
    src = tmp_path / "src" / "pusht" / "pusht_cchi_v7_replay.zarr"
    # zarr 2 in Diffusion Policy's layout, as the real archive (no per-chunk checksums)
    root = zarr.open_group(str(src), mode="w", zarr_format=2)
    root.create_group("data").create_array("state", data=np.repeat(np.arange(3), [4, 5, 6])[:, None].repeat(5, 1)
                                           .astype(np.float32), chunks=(4, 5), config={"write_empty_chunks": True})
    root["data"].create_array("action", data=np.zeros((15, 2), np.float32), chunks=(4, 2), config={"write_empty_chunks": True})
    root.create_group("meta").create_array("episode_ends", data=np.array([4, 9, 15], np.int64))
    zpath = tmp_path / "serve" / "pusht.zip"
    zpath.parent.mkdir()
    with zipfile.ZipFile(zpath, "w") as z:
        for f in sorted(src.rglob("*")):
            z.write(f, f.relative_to(tmp_path / "src"))
    digest = hashlib.sha256(zpath.read_bytes()).hexdigest()
    ds = Dataset("pusht", "http://127.0.0.1:1/pusht.zip", digest, zpath.stat().st_size, DATASETS["pusht"].store, "test",
                 DATASETS["pusht"].key_meta)
    monkeypatch.setitem(DATASETS, "pusht", ds)
    return zpath, src


@pytest.fixture
def server(archive):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive[0].parent))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_fetch_downloads_checks_unpacks_and_resolves_by_name(tmp_path, archive, server, monkeypatch):
    monkeypatch.setenv("PROTEGE_DATA", str(tmp_path / "data"))
    path = fetch("pusht", url=f"{server}/pusht.zip", progress=False)
    assert path == tmp_path / "data" / "pusht" / "pusht_cchi_v7_replay.zarr"
    s = EpisodeStore(path)
    assert s.n_episodes == 3 and s.episode_lengths.tolist() == [4, 5, 6]
    assert s.spec("state").names[-1] == "block_angle" and s.spec("state").dim_units()[-1] == "rad"  # named at fetch
    if s.zarr_format == 2:  # no per-chunk checksums: fetch records them while the store is known good
        from protege.data.manifest import MANIFEST
        from protege.data.validate import validate

        assert (path / MANIFEST).exists() and "against the checksum manifest" in validate(s, progress=False).verified
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["pusht"]  # no temporary left behind
    assert resolve_store("pusht") == str(path) and resolve_store("other.zarr") == "other.zarr"
    assert fetch("pusht", url="http://127.0.0.1:1/never", progress=False) == path  # already there: no download


def test_a_corrupt_download_is_refused_and_nothing_is_written(tmp_path, archive, server, monkeypatch):
    zpath, _ = archive
    zpath.write_bytes(zpath.read_bytes()[:-10] + b"0123456789")  # a damaged file of the same size
    with pytest.raises(FetchError, match="SHA-256 .* expected"):
        fetch("pusht", dest=tmp_path / "data", url=f"{server}/pusht.zip", progress=False)
    assert list((tmp_path / "data").iterdir()) == []


def test_offline_says_how_to_use_a_local_copy_and_the_copy_works(tmp_path, archive, monkeypatch):
    zpath, src = archive
    monkeypatch.setenv("PROTEGE_DATA", str(tmp_path / "data"))
    with pytest.raises(FetchError, match=r"protege-data fetch pusht --from"):
        fetch("pusht", timeout_s=2, progress=False)  # port 1 on loopback: refused, as offline
    with pytest.raises(FileNotFoundError, match="protege-data fetch pusht"):
        resolve_store("pusht")
    assert EpisodeStore(fetch("pusht", source=zpath, progress=False)).n_episodes == 3      # the archive
    for d, _, files in os.walk(src):  # a read-only copy, as a shared dataset folder is
        for f in files:
            os.chmod(os.path.join(d, f), 0o444)
        os.chmod(d, 0o555)
    try:
        fetched = fetch("pusht", source=src, force=True, progress=False)  # an unpacked store
    finally:
        for d, _, files in os.walk(src):
            os.chmod(d, 0o755)
    assert EpisodeStore(fetched).n_episodes == 3 and (fetched / "protege_manifest.json").exists()
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("readme.txt", "not pusht")
    with pytest.raises(FetchError, match="holds no pusht/pusht_cchi_v7_replay.zarr"):
        fetch("pusht", dest=tmp_path / "d2", source=other, check=False, progress=False)


def test_the_cli_reports_offline_and_a_missing_dataset_as_one_line(tmp_path):
    env = {**ENV, "PROTEGE_DATA": str(tmp_path / "data")}
    cli = [str(BIN / "protege-data")]
    p = subprocess.run(cli + ["fetch", "pusht", "--url", "http://127.0.0.1:1/pusht.zip"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("protege-data fetch: error: cannot download") and "--from" in p.stderr
    assert "Traceback" not in p.stderr
    p = subprocess.run(cli + ["info", "pusht"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "protege-data fetch pusht" in p.stderr and "Traceback" not in p.stderr


def test_an_unsafe_archive_path_is_refused(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("pusht/pusht_cchi_v7_replay.zarr/.zgroup", "{}")
        z.writestr("../evil.txt", "x")
    with pytest.raises(FetchError, match="unsafe path"):
        fetch_mod._unpack(bad, tmp_path / "out", DATASETS["pusht"])
    assert not (tmp_path / "evil.txt").exists()
