"""Published datasets by name: ``protege-data fetch pusht`` downloads, checks and unpacks one into the
data folder, and ``dataset=pusht`` (any tool's store argument) finds it there.

The data folder is ``$PROTEGE_DATA``, else ``$XDG_CACHE_HOME/protege/data`` (``~/.cache/protege/data``).
A fetch writes into a temporary folder beside its destination and renames it into place only
after the archive's SHA-256 matched and the store opened: an interrupted or failed fetch leaves
nothing that looks like a dataset.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .store import EpisodeStore, StoreError


@dataclass(frozen=True)
class Dataset:
    """A published dataset: where its archive is, its SHA-256 and size, and the store inside it."""

    name: str
    url: str
    sha256: str
    size: int           # bytes of the archive
    store: str          # the store's path inside the archive (and under the data folder)
    about: str
    key_meta: dict | None = None  # {key: {names, unit}} written into the store's attributes (the archive has none)


DATASETS = {
    "pusht": Dataset(
        name="pusht",
        url="https://diffusion-policy.cs.columbia.edu/data/training/pusht.zip",
        sha256="63d52a114a3f010861f0181309d165b7d69133ccae426ece2fc94caed147bdf9",
        size=30_988_725,
        store="pusht/pusht_cchi_v7_replay.zarr",
        about="Diffusion Policy's 206 human PushT demonstrations (Chi et al., RSS 2023), zarr format 2",
        key_meta={  # gym-pusht's frame: pixels of the 512 x 512 board, the block's angle in rad
            "state": {"names": ["agent_x", "agent_y", "block_x", "block_y", "block_angle"], "unit": "px, px, px, px, rad"},
            "action": {"names": ["target_x", "target_y"], "unit": "px, px"},
            "keypoint": {"unit": "px"}, "n_contacts": {"unit": "count"}, "img": {"unit": "RGB 0..255"},
        },
    ),
}


class FetchError(RuntimeError):
    """A dataset could not be fetched (offline, wrong checksum, not an archive of that dataset)."""


def data_dir() -> Path:
    """The data folder: ``$PROTEGE_DATA``, else ``$XDG_CACHE_HOME/protege/data`` (default ``~/.cache``)."""
    if os.environ.get("PROTEGE_DATA"):
        return Path(os.environ["PROTEGE_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "protege" / "data"


def resolve_store(name_or_path: str | os.PathLike) -> str:
    """A store path as given, or a dataset's name (``pusht``) resolved to its fetched store.

    Raises:
        FileNotFoundError: a dataset's name whose store has not been fetched (the message says how).
    """
    s = str(name_or_path)
    if s in DATASETS and not Path(s).exists():
        path = data_dir() / DATASETS[s].store
        if not path.exists():
            raise FileNotFoundError(f"dataset {s!r} is not in the data folder ({path} does not exist): "
                                    f"run `protege-data fetch {s}` first")
        return str(path)
    return s


def _sha256(path: Path, progress: bool) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc="sha256",
                                     disable=not progress, leave=False) as bar:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def _download(url: str, out: Path, size: int, timeout_s: float, progress: bool) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r, open(out, "wb") as f:
            total = int(r.headers.get("Content-Length") or size)
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {Path(url).name}",
                      disable=not progress) as bar:
                for block in iter(lambda: r.read(1 << 20), b""):
                    f.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or e
        raise FetchError(f"cannot download {url}: {reason}") from e


def _unpack(archive: Path, into: Path, ds: Dataset) -> None:
    try:
        with zipfile.ZipFile(archive) as z:
            names = z.namelist()
            if not any(n.startswith(ds.store.rstrip("/") + "/") for n in names):
                raise FetchError(f"{archive} holds no {ds.store}: not the {ds.name} archive")
            for n in names:  # never write outside the folder (a hostile archive's ../ paths)
                if Path(n).is_absolute() or ".." in Path(n).parts:
                    raise FetchError(f"{archive}: unsafe path {n!r} in the archive")
            z.extractall(into)
    except zipfile.BadZipFile as e:
        raise FetchError(f"{archive} is not a zip archive ({e})") from e


def _record_checksums(path: Path, store: EpisodeStore, verified_archive: bool) -> None:
    """A store without per-chunk checksums (zarr 2) gets its checksum manifest now, while it is known
    good: from an archive whose SHA-256 matched, or after a full validation of a copied folder."""
    from .manifest import has_checksums, write_manifest
    from .validate import validate

    if all(has_checksums(store._array(k)) for k in store.keys):
        return
    if not verified_archive:
        report = validate(store, progress=False)
        if not report.ok:
            raise FetchError(f"the store does not validate: {report.problems[0]} (nothing was written)")
    write_manifest(path, by="fetch")


def fetch(name: str, dest: str | os.PathLike | None = None, source: str | os.PathLike | None = None,
          url: str | None = None, force: bool = False, check: bool = True, timeout_s: float = 60.0,
          progress: bool = True) -> Path:
    """Put dataset ``name`` into the data folder; returns its store's path.

    Args:
        name: a key of :data:`DATASETS` (``pusht``).
        dest: the data folder (default :func:`data_dir`).
        source: a local copy instead of the download: the archive (checked like a download) or an
            unpacked store directory (opened and copied).
        url: download from here instead (a mirror); the checksum still applies.
        force: replace a store already there.
        check: verify the archive's SHA-256 (turn off only for an archive you trust that differs).

    Raises:
        KeyError: an unknown dataset.
        FetchError: offline or unreachable (the message says how to use a local copy), a checksum
            mismatch, an archive without the dataset's store, a store that does not open.
    """
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    ds = DATASETS[name]
    root = Path(dest).expanduser() if dest is not None else data_dir()
    final = root / ds.store
    if final.exists() and not force:
        EpisodeStore(final)  # a store that does not open is reported, not silently kept
        return final
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".fetch-{name}-") as tmp:
        tmp = Path(tmp)
        src = Path(source).expanduser() if source is not None else None
        if src is not None and src.is_dir():
            staged = tmp / "store"
            shutil.copytree(src, staged)
            for d, _, files in os.walk(staged):  # the copy is ours: writable even when the source was not
                os.chmod(d, os.stat(d).st_mode | 0o200)
                for f in files:
                    os.chmod(os.path.join(d, f), os.stat(os.path.join(d, f)).st_mode | 0o200)
        else:
            if src is not None:
                if not src.is_file():
                    raise FetchError(f"{src} does not exist (give the {Path(ds.url).name} archive or an unpacked store)")
                archive = src
            else:
                archive = tmp / Path(ds.url).name
                try:
                    _download(url or ds.url, archive, ds.size, timeout_s, progress)
                except FetchError as e:
                    raise FetchError(
                        f"{e}.\nOffline, or behind a proxy? Download {ds.url} on a machine that can "
                        f"(SHA-256 {ds.sha256}) and run: protege-data fetch {name} --from /path/to/{Path(ds.url).name} "
                        f"(an unpacked {Path(ds.store).name} works too)") from e
            if check:
                digest = _sha256(archive, progress)
                if digest != ds.sha256:
                    raise FetchError(f"{archive}: SHA-256 {digest}, expected {ds.sha256} for {ds.name}: a damaged or "
                                     "different file (nothing was written)")
            _unpack(archive, tmp / "unpacked", ds)
            staged = tmp / "unpacked" / ds.store
        try:
            store = EpisodeStore(staged)
        except StoreError as e:
            raise FetchError(f"the {name} store does not open: {e}") from e
        if store.n_episodes == 0:
            raise FetchError(f"the {name} store holds no episode")
        if ds.key_meta:  # names and units of the keys, which the archive does not carry (root attributes only)
            import zarr

            root = zarr.open_group(str(staged), mode="r+")
            keys = dict(root.attrs.get("keys", {}))
            for k, m in ds.key_meta.items():
                if k in store.keys:
                    keys[k] = {**m, **keys.get(k, {})}
            root.attrs["keys"] = keys
            store = EpisodeStore(staged)
        _record_checksums(staged, store, verified_archive=check and not (src is not None and src.is_dir()))
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staged, final)
    return final
