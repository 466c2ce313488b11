"""Damage in stores without per-chunk checksums (zarr 2, as Diffusion Policy writes them) and what
validate and repair make of it: each case failed before (issue 29)."""

import json
import stat
import subprocess
import sys
from pathlib import Path

import numcodecs
import numpy as np
import zarr

from protege.data import edit
from protege.data.cli import main as data_cli
from protege.data.manifest import MANIFEST
from protege.data.store import EpisodeStore
from protege.data.validate import validate

BIN = Path(sys.executable).parent
LENGTHS = (40, 30, 50, 40)


def dp_store(path, lengths=LENGTHS, seed=0):
    """A zarr 2 store in Diffusion Policy's replay-buffer layout: Blosc/zstd, no checksums,
    chunks that span episodes (state chunks of 32 rows), px-scale states like PushT's."""
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    blosc = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
    data = root.create_group("data")
    values = {"state": rng.uniform(0, 512, (n, 5)).astype(np.float32),
              "action": rng.uniform(0, 512, (n, 2)).astype(np.float32),
              "img": rng.uniform(0, 255, (n, 8, 8, 3)).astype(np.float32)}
    for k, v in values.items():
        data.create_array(k, data=v, chunks=(32, *v.shape[1:]), compressors=blosc, config={"write_empty_chunks": True})
    root.create_group("meta").create_array("episode_ends", data=np.cumsum(lengths).astype(np.int64), chunks=(100,),
                                           compressors=blosc)
    return values


def flip(path: Path, arr_path: Path, key: str):
    """Flip one byte of a Blosc chunk so that it still decodes (Blosc has no checksum), into values
    far beyond any pixel, as the flipped bytes of the issue's PushT store did. Deterministic: the
    first such byte from the end."""
    good = path.read_bytes()
    for off in range(len(good) - 1, 16, -1):
        b = bytearray(good)
        b[off] ^= 0x5A
        path.write_bytes(bytes(b))
        try:
            v = zarr.open_group(str(arr_path), mode="r")[f"data/{key}"][:]
        except Exception:  # noqa: BLE001 - this byte breaks decoding: try the next
            continue
        if np.abs(np.nan_to_num(v, nan=1e30, posinf=1e30)).max() > 1e6:
            return
    raise AssertionError("no byte flip decodes to implausible values")


def validate_cli(path):
    return subprocess.run([str(BIN / "protege-data"), "validate", str(path)], capture_output=True, text=True, timeout=120)


def test_flipped_bytes_that_decode_make_every_episode_of_the_chunk_damaged(tmp_path):
    path = tmp_path / "dp.zarr"
    values = dp_store(path)
    flip(path / "data" / "state" / "1.0", path, "state")  # rows 32-63: episodes 0 and 1
    decoded = zarr.open_group(str(path), mode="r")["data/state"][32:64]
    assert not np.array_equal(decoded, values["state"][32:64])  # it decodes, to other values
    report = validate(EpisodeStore(path), progress=False)
    assert [(p.kind, p.key, p.episodes) for p in report.problems] == [("damaged chunk", "state", (0, 1))], report.problems
    assert "no checksums" in report.problems[0].detail and "no checksums" in report.verified
    # repair drops both episodes, keeps the store's format, and the result trains on sane values
    assert data_cli(["repair", str(path), "--yes"]) == 0
    s = EpisodeStore(path)
    assert s.zarr_format == 2 and s.n_episodes == 2 and list(s.episode_lengths) == [50, 40]
    np.testing.assert_array_equal(s._array("state")[:], values["state"][70:])
    assert np.abs(s._array("state")[:]).max() < 1e3


def test_a_manifest_catches_any_changed_byte_later(tmp_path):
    path = tmp_path / "dp.zarr"
    values = dp_store(path)
    p = validate_cli(path)
    assert p.returncode == 0 and f"wrote {MANIFEST}" in p.stdout and (path / MANIFEST).exists()
    # plausible values written over one chunk (as flipped bytes could decode): only the manifest can tell
    arr = zarr.open_group(str(path), mode="r+")["data/action"]
    arr[96:128] = values["action"][96:128] + 1.0
    p = validate_cli(path)
    assert p.returncode == 1 and "data/action: damaged chunk: chunk 3.0" in p.stdout and "no longer matches the manifest" in p.stdout
    assert "damaged episodes: 2-3" in p.stdout, p.stdout
    assert "against the checksum manifest" in p.stdout


def test_a_read_only_store_is_checked_and_left_alone(tmp_path):
    path = tmp_path / "dp.zarr"
    dp_store(path)
    path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        p = validate_cli(path)
    finally:
        path.chmod(0o755)
    assert p.returncode == 0 and "could not write a checksum manifest (the store is read-only)" in p.stdout
    assert not (path / MANIFEST).exists()


def test_edits_keep_zarr_2_and_its_layout(tmp_path):
    path = tmp_path / "dp.zarr"
    values = dp_store(path)
    out = tmp_path / "out.zarr"
    assert data_cli(["delete", str(path), "1", "--out", str(out)]) == 0
    g = zarr.open_group(str(out), mode="r")
    assert g.metadata.zarr_format == 2 and json.loads((out / ".zgroup").read_text()) == {"zarr_format": 2}
    src = zarr.open_group(str(path), mode="r")
    for k in ("state", "action", "img"):
        assert g[f"data/{k}"].chunks == src[f"data/{k}"].chunks and g[f"data/{k}"].compressors == src[f"data/{k}"].compressors
    keep = np.r_[0:40, 70:160]
    np.testing.assert_array_equal(g["data/img"][:], values["img"][keep])
    assert list(g["meta/episode_ends"][:]) == [40, 90, 130]
    assert validate(EpisodeStore(out), progress=False).ok and (out / MANIFEST).exists()
    # relabel links the data and renews only meta/'s manifest entries
    assert data_cli(["validate", str(path)]) == 0 and data_cli(["relabel", str(path), "0", "--success", "no"]) == 0
    assert validate(EpisodeStore(path), progress=False).ok


def test_repair_keeps_what_it_can(tmp_path, capsys):
    # an episode_ends whose last value runs past whole data: the last episode is clamped, not dropped
    path = tmp_path / "a.zarr"
    dp_store(path)
    ends = zarr.open_group(str(path), mode="r+")["meta/episode_ends"]
    ends[:] = np.array([40, 70, 120, 175])
    assert data_cli(["validate", str(path)]) == 1
    assert data_cli(["repair", str(path), "--yes"]) == 0
    assert list(EpisodeStore(path).episode_lengths) == [40, 30, 50, 40]
    # a wrong dtype in an array's metadata is named once, with the dtype the chunks hold, and set right
    meta = path / "data" / "state" / ".zarray"
    meta.write_text(meta.read_text().replace("<f4", "<f8"))
    report = validate(EpisodeStore(path), progress=False)
    assert len(report.problems) == 1 and report.problems[0].kind == "metadata"
    assert "data/state/.zarray" in report.problems[0].detail and "the dtype is likely <f4" in report.problems[0].detail
    assert data_cli(["repair", str(path), "--yes"]) == 0 and validate(EpisodeStore(path), progress=False).ok
    # the root group file gone: validate reports damage (exit 1), repair recreates it
    (path / ".zgroup").unlink()
    capsys.readouterr()
    assert data_cli(["validate", str(path)]) == 1 and "root group file" in capsys.readouterr().out
    assert data_cli(["repair", str(path), "--yes"]) == 0 and EpisodeStore(path).n_episodes == 4
    # non-increasing episode ends: damage (exit 1, as README says), not a usage error (2)
    ends = zarr.open_group(str(path), mode="r+")["meta/episode_ends"]
    ends[:] = np.array([40, 30, 120, 160])
    p = validate_cli(path)
    assert p.returncode == 1 and "entry 1 is 30 after 40" in p.stdout
    assert data_cli(["repair", str(path), "--yes"]) == 1


def test_edit_of_a_checksummed_store_writes_no_manifest(tmp_path):
    from protege.data.store import EpisodeWriter

    path = tmp_path / "p.zarr"
    w = EpisodeWriter(path, fps=10)
    for i in range(3):
        w.add_episode({"a": np.full((4, 2), i, np.float32)})
    w.close()
    edit.delete(path, [1], progress=False)
    assert not (path / MANIFEST).exists() and EpisodeStore(path).n_episodes == 2
