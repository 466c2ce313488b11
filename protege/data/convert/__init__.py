"""``protege-data convert SRC DST``: episode stores <-> robomimic HDF5 and LeRobot v3.0 datasets.

Formats are told apart by what is on disk: a zarr store has ``meta/episode_ends``, a robomimic
dataset is an HDF5 file (``.hdf5``/``.h5``), a LeRobot dataset is a folder with
``meta/info.json``. A destination is named by its suffix (``.zarr``, ``.hdf5``/``.h5``) or by
``to="lerobot"``. The destination is written beside its final path and renamed into place, so
a failed or interrupted conversion leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path

from ..store import EpisodeStore, RemotePath, StoreError, is_url
from .common import ConvertError, Report, write_atomically
from .lerobot import export_lerobot, import_lerobot
from .robomimic import export_robomimic, import_robomimic

FORMATS = ("store", "robomimic", "lerobot")


def detect(path: Path) -> str:
    """The format of an existing dataset at ``path``.

    Raises:
        ConvertError: no such path, or a format this tool does not know.
    """
    if is_url(path):  # a remote episode store (read-only): the only remote source convert takes
        if not RemotePath(str(path)).exists():
            raise ConvertError(f"{path}: no such store")
        return "store"
    path = Path(path)
    if not path.exists():
        raise ConvertError(f"{path}: no such file or folder")
    if path.is_dir() and (path / "meta" / "episode_ends").exists():
        return "store"
    if path.is_dir() and (path / "meta" / "info.json").is_file():
        return "lerobot"
    if path.is_file() and path.suffix.lower() in (".hdf5", ".h5"):
        return "robomimic"
    raise ConvertError(f"{path}: not an episode store (meta/episode_ends), a LeRobot dataset (meta/info.json) "
                       f"or a robomimic .hdf5 file")


def destination_format(path: Path, to: str | None) -> str:
    if to:
        if to not in FORMATS:
            raise ConvertError(f"--to {to}: use one of {', '.join(FORMATS)}")
        return to
    suffix = Path(path).suffix.lower()
    if suffix == ".zarr":
        return "store"
    if suffix in (".hdf5", ".h5"):
        return "robomimic"
    raise ConvertError(f"{path}: cannot tell the format from the name; name it .zarr or .hdf5, or pass --to lerobot")


def convert(src: str | Path, dst: str | Path, to: str | None = None, progress: bool = True,
            image_codec: str = "lossless", crf: int = 18, fps: float | None = None) -> tuple[str, str, Report]:
    """Convert ``src`` into a new ``dst``; one side must be an episode store.

    Returns:
        (source format, destination format, the report of what was dropped or added).

    Raises:
        ConvertError: a malformed source, an unknown format, or neither side a store.
        FileExistsError: ``dst`` exists.
    """
    src, dst = (src if is_url(src) else Path(src)), Path(dst)
    a, b = detect(src), destination_format(dst, to)
    if "store" not in (a, b) or a == b == "store":
        raise ConvertError(f"{a} -> {b}: convert goes between an episode store and robomimic or LeRobot; "
                           f"go through a store (two conversions)")
    if a == "store":
        try:
            store = EpisodeStore(src)
        except StoreError as e:
            raise ConvertError(str(e)) from e
        export = {"robomimic": export_robomimic, "lerobot": export_lerobot}[b]
        kw = {"crf": crf, "fps": fps} if b == "lerobot" else {}
        report = write_atomically(dst, lambda tmp: export(store, tmp, progress=progress, **kw))
    else:
        imp = {"robomimic": import_robomimic, "lerobot": import_lerobot}[a]
        report = write_atomically(dst, lambda tmp: imp(src, tmp, progress=progress, image_codec=image_codec))
    return a, b, report


__all__ = ["convert", "detect", "ConvertError", "Report", "FORMATS"]
