"""LeRobot datasets (format v3.0, LeRobot 0.4) <-> episode stores, with pyarrow and PyAV.

The v3.0 layout (LeRobot's ``lerobot/datasets/utils.py``)::

    meta/info.json                        fps, features {key: dtype, shape, names, info}, paths, totals
    meta/tasks.parquet                    task strings (the index) -> task_index
    meta/episodes/chunk-*/file-*.parquet  per episode: length, tasks, dataset_from/to_index, data and
                                          video file indices, videos/<key>/from_timestamp, to_timestamp
    meta/stats.json                       per feature min, max, mean, std, count, q01..q99
    data/chunk-*/file-*.parquet           one row per frame: the features + timestamp, frame_index,
                                          episode_index, index, task_index
    videos/<key>/chunk-*/file-*.mp4       a camera's frames, many episodes per file

Store keys: ``observation.images.<cam>`` -> ``<cam>``, ``observation.state`` -> ``state``,
``observation.<x>`` -> ``<x>``, ``action`` -> ``action``, ``next.reward`` -> ``reward``,
``next.done`` -> ``done``, anything else with dots as underscores. The LeRobot name of each key is
kept in the store's attributes (``lerobot.features``), so an export restores it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..store import EpisodeStore, EpisodeWriter
from .common import ConvertError, Report, image_to_uint8, interruptible

BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
# pandas' index metadata, so that LeRobot's pd.read_parquet(meta/tasks.parquet) indexes by task
_TASKS_PANDAS = {"index_columns": ["__index_level_0__"],
                 "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "str",
                                     "metadata": {"encoding": "UTF-8"}}],
                 "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
                             {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object", "metadata": None}],
                 "attributes": {}, "creator": {"library": "pyarrow", "version": "protege"}, "pandas_version": "2.2.0"}


def store_key(name: str) -> str:
    """LeRobot feature name -> store key."""
    for prefix in ("observation.images.", "observation."):
        if name.startswith(prefix):
            return name[len(prefix):].replace(".", "_")
    return {"next.reward": "reward", "next.done": "done", "next.success": "success"}.get(name, name.replace(".", "_"))


def lerobot_key(key: str, image: bool) -> str:
    """Store key -> LeRobot feature name (for stores that did not come from LeRobot)."""
    if image:
        return f"observation.images.{key}"
    return {"action": "action", "state": "observation.state", "reward": "next.reward", "done": "next.done",
            "success": "next.success"}.get(key, f"observation.{key}")


# -- import ------------------------------------------------------------------------------------
def _read_info(src: Path) -> dict[str, Any]:
    p = src / "meta" / "info.json"
    if not p.is_file():
        raise ConvertError(f"{src}: no meta/info.json: not a LeRobot dataset")
    try:
        info = json.loads(p.read_text())
    except ValueError as e:
        raise ConvertError(f"{p}: not valid JSON ({e})") from e
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise ConvertError(f"{src}: LeRobot format {version or '(unknown)'}; this converter reads v3.0 "
                           f"(convert older datasets with LeRobot's convert_dataset_v21_to_v30 first)")
    for field in ("fps", "features"):
        if field not in info:
            raise ConvertError(f"{p}: no '{field}'")
    return info


def _read_tables(folder: Path, what: str, columns=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(folder.glob("chunk-*/file-*.parquet"))
    if not files:
        raise ConvertError(f"{folder}: no {what} parquet files (chunk-*/file-*.parquet)")
    try:
        tables = [pq.read_table(f, columns=columns(pq.read_schema(f)) if callable(columns) else columns) for f in files]
        return pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowException, OSError) as e:
        raise ConvertError(f"{folder}: cannot read the {what} parquet files ({type(e).__name__}: {e})") from e


def _column(table, name: str, shape: list[int], dtype: str) -> np.ndarray:
    import pyarrow as pa

    col = table.column(name).combine_chunks()
    n = len(col)
    while pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
        col = col.flatten()
    return np.asarray(col.to_numpy(zero_copy_only=False)).astype(dtype if dtype != "string" else object).reshape(n, *shape)


class _VideoCursor:
    """Frames of one mp4 in order, handed out by timestamp window."""

    def __init__(self, path: Path):
        import av

        if not path.is_file():
            raise ConvertError(f"{path}: video file missing")
        self.path = path
        self.container = av.open(str(path))
        self.frames: Iterator = self.container.decode(video=0)
        self.pending: tuple[float, np.ndarray] | None = None

    def take(self, start: float, end: float, fps: float) -> list[np.ndarray]:
        """Frames with timestamps in [start, end) (half a frame's tolerance)."""
        out, tol = [], 0.5 / fps
        while True:
            if self.pending is None:
                try:
                    f = next(self.frames)
                except StopIteration:
                    return out
                self.pending = (float(f.time), f.to_ndarray(format="rgb24"))
            t, img = self.pending
            if t < start - tol:
                self.pending = None
                continue
            if t >= end - tol:
                return out
            out.append(img)
            self.pending = None

    def close(self) -> None:
        self.container.close()


def import_lerobot(src: Path, dst: Path, progress: bool = True, image_codec: str = "lossless") -> Report:
    """Write a LeRobot v3.0 dataset ``src`` into a new store at ``dst``.

    Raises:
        ConvertError: ``src`` is not a v3.0 dataset, or its files disagree (missing columns,
            video files, frame counts that differ from an episode's length).
    """
    import cv2

    report = Report()
    info = _read_info(src)
    fps = float(info["fps"])
    features = info["features"]
    keep = {k: f for k, f in features.items() if k not in BOOKKEEPING}
    videos = [k for k, f in keep.items() if f.get("dtype") == "video"]
    images = [k for k, f in keep.items() if f.get("dtype") == "image"]
    numeric = [k for k in keep if k not in videos and k not in images]
    names = {k: store_key(k) for k in keep}
    if len(set(names.values())) != len(names):
        raise ConvertError(f"{src}: features {sorted(keep)} map to clashing store keys {sorted(names.values())}")
    episodes = _read_tables(src / "meta" / "episodes", "episode", columns=lambda s: [n for n in s.names if not n.startswith("stats/")])
    need = ["episode_index", "length", "dataset_from_index", "dataset_to_index"]
    missing = [c for c in need if c not in episodes.column_names]
    if missing:
        raise ConvertError(f"{src}/meta/episodes: missing columns {missing}")
    eps = episodes.to_pydict()
    order = np.argsort(eps["episode_index"])
    data = _read_tables(src / "data", "data", columns=lambda s: [n for n in s.names if n in numeric or n in images or n in ("index", "episode_index")])
    for k in numeric + images:
        if k not in data.column_names:
            raise ConvertError(f"{src}/data: no column {k!r} (meta/info.json lists it)")
    index = np.asarray(data.column("index").to_numpy())
    row_of = np.argsort(index)
    cursors: dict[Path, _VideoCursor] = {}
    ours = info.get("protege", {})  # written by our export: units, frames, the episodes' metadata
    key_meta = {names[k]: {"lerobot_key": k, **({"names": f["names"]} if f.get("names") else {}), **ours.get("keys", {}).get(k, {})}
                for k, f in keep.items()}
    episode_meta = ours.get("episode_meta")
    writer = EpisodeWriter(dst, fps=fps, key_meta=key_meta, image_codec=image_codec)
    writer.root.attrs["lerobot"] = {"robot_type": info.get("robot_type"), "codebase_version": info["codebase_version"],
                                    "features": {names[k]: k for k in keep}}
    shapes = info.get("protege", {}).get("shapes", {})  # our exports flatten; this restores
    columns = {k: _column(data, k, list(shapes.get(k, keep[k]["shape"])), keep[k]["dtype"]) for k in numeric}
    try:
        for i in interruptible(order, desc="episodes", disable=not progress, leave=False):
            e = int(eps["episode_index"][i])
            a, b, T = int(eps["dataset_from_index"][i]), int(eps["dataset_to_index"][i]), int(eps["length"][i])
            pos = np.searchsorted(index, np.arange(a, b), sorter=row_of)
            rows = row_of[np.clip(pos, 0, len(row_of) - 1)]
            if b - a != T or len(rows) != T or not np.array_equal(index[rows], np.arange(a, b)):
                raise ConvertError(f"{src}: episode {e}: rows {a}..{b} of data/ do not hold its {T} frames")
            steps: dict[str, np.ndarray] = {names[k]: columns[k][rows] for k in numeric}
            for k in images:  # HF Image: a struct of PNG/JPEG bytes
                col = data.column(k).take(rows).to_pylist()
                steps[names[k]] = np.stack([cv2.cvtColor(cv2.imdecode(np.frombuffer(c["bytes"], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                                            for c in col])
            for k in videos:
                chunk, file = eps[f"videos/{k}/chunk_index"][i], eps[f"videos/{k}/file_index"][i]
                path = src / info.get("video_path", "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4").format(
                    video_key=k, chunk_index=chunk, file_index=file)
                if path not in cursors:
                    cursors[path] = _VideoCursor(path)
                frames = cursors[path].take(float(eps[f"videos/{k}/from_timestamp"][i]), float(eps[f"videos/{k}/to_timestamp"][i]), fps)
                if len(frames) != T:
                    raise ConvertError(f"{path}: episode {e} has {len(frames)} frames in its time range, its length is {T}")
                steps[names[k]] = np.stack(frames)
            tasks = eps.get("tasks", [[]] * len(order))[i] or []
            meta = {"task": tasks[0]} if len(tasks) == 1 else {"tasks": list(tasks)}
            if episode_meta is not None and e < len(episode_meta):
                meta = {**episode_meta[e], **meta}
            writer.add_steps(steps)
            writer.commit(**meta, lerobot_episode_index=e)
    finally:
        for c in cursors.values():
            c.close()
    writer.close()
    report.dropped.append("meta/stats.json and per-episode stats (recomputed by protege-train)")
    report.dropped.append("timestamp, frame_index, index, task_index columns (the step order and fps give them back)")
    if videos:
        report.notes.append(f"videos {videos} decoded to uint8 frames (their lossy codec's pixels)")
    return report


# -- export ------------------------------------------------------------------------------------
def _stats(x: np.ndarray, image: bool) -> dict[str, Any]:
    """LeRobot's per-feature statistics: images per channel (3, 1, 1) in [0, 1]."""
    if image:
        x = x.reshape(-1, 3).astype(np.float64) / 255.0
        f = lambda v: np.asarray(v).reshape(3, 1, 1).tolist()  # noqa: E731
    else:
        x = x.reshape(len(x), -1).astype(np.float64)
        f = lambda v: np.asarray(v).tolist()  # noqa: E731
    out = {"min": f(x.min(0)), "max": f(x.max(0)), "mean": f(x.mean(0)), "std": f(x.std(0)), "count": [int(len(x))]}
    for q in QUANTILES:
        out[f"q{int(round(q * 100)):02d}"] = f(np.quantile(x, q, axis=0))
    return out


def _encode_video(frames: Iterator[np.ndarray], path: Path, fps: float, crf: int) -> None:
    """H.264 (yuv420p, a keyframe every 2 frames as LeRobot encodes for random access); frame i at i / fps."""
    import av
    from fractions import Fraction

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = None
        for i, img in enumerate(frames):
            if stream is None:
                h, w = img.shape[:2]
                if h % 2 or w % 2:
                    raise ConvertError(f"{path.parent.name}: H.264 needs even image sizes, got {w}x{h}")
                stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                stream.options = {"crf": str(crf), "g": "2"}
                stream.codec_context.time_base = Fraction(1, 1) / Fraction(fps).limit_denominator(1000)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = stream.codec_context.time_base
            for p in stream.encode(frame):
                out.mux(p)
        if stream is not None:
            for p in stream.encode():
                out.mux(p)


def export_lerobot(store: EpisodeStore, dst: Path, progress: bool = True, crf: int = 18, fps: float | None = None) -> Report:
    """Write ``store`` as a LeRobot v3.0 dataset folder ``dst`` (one data file, one video per camera).

    Images become H.264 videos (``crf``: lower is closer to the pixels, 0 is lossless);
    low-dim keys of more than one axis are flattened (their shape goes into
    ``info.json``'s ``protege.shapes``); each episode's task is its ``task`` metadata, else the
    store's name. ``fps`` is for stores that record none (Diffusion Policy's PushT: 10).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    report = Report()
    if fps is None and store.fps is None:
        raise ConvertError(f"{store.path}: the store records no fps; LeRobot datasets need one (--fps)")
    if fps is not None and store.fps is not None and float(fps) != float(store.fps):
        raise ConvertError(f"--fps {fps:g} contradicts the store's {store.fps:g} Hz")
    fps = float(fps if fps is not None else store.fps)
    meta = store.episode_meta
    mapping = dict(store.attrs.get("lerobot", {}).get("features", {}))
    specs = store.specs()
    lr = {k: mapping.get(k) or lerobot_key(k, specs[k].is_image) for k in store.keys}
    images = [k for k in store.keys if specs[k].is_image]
    low = [k for k in store.keys if k not in images]
    shapes = {k: list(specs[k].shape) for k in low if len(specs[k].shape) != 1}
    for k, s in shapes.items():
        report.notes.append(f"{k} {tuple(s)} flattened to ({int(np.prod(s))},) as {lr[k]} (info.json protege.shapes restores it)")
    default_task = Path(store.path).name.removesuffix(".zarr")
    tasks_per_ep = [str(m.get("task", default_task)) for m in meta]
    if any("task" not in m for m in meta):
        report.added.append(f"task '{default_task}' for episodes without a task")
    tasks = list(dict.fromkeys(tasks_per_ep))
    lengths = store.episode_lengths
    starts = store.episode_starts
    E, N = store.n_episodes, store.n_steps

    # data/chunk-000/file-000.parquet
    cols: dict[str, pa.Array] = {}
    stats: dict[str, Any] = {}
    features: dict[str, Any] = {}
    for k in low:
        x = store.read(k).reshape(N, -1)
        dtype = {"f": "float32", "i": "int64", "u": "int64", "b": "bool"}[x.dtype.kind]
        if x.dtype.kind == "f" and x.dtype != np.float32:
            dtype = "float64" if x.dtype == np.float64 else "float32"
        x = x.astype(dtype)
        d = x.shape[1]
        names = store.attrs.get("keys", {}).get(k, {}).get("names")
        features[lr[k]] = {"dtype": dtype, "shape": [d], "names": names if names and len(names) == d else None}
        cols[lr[k]] = pa.array(x[:, 0]) if d == 1 else pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)
        stats[lr[k]] = _stats(x, image=False)
    frame_index = np.concatenate([np.arange(n) for n in lengths]).astype(np.int64)
    episode_index = np.repeat(np.arange(E), lengths).astype(np.int64)
    task_index = np.repeat([tasks.index(t) for t in tasks_per_ep], lengths).astype(np.int64)
    book = {"timestamp": (frame_index / fps).astype(np.float32), "frame_index": frame_index, "episode_index": episode_index,
            "index": np.arange(N, dtype=np.int64), "task_index": task_index}
    for k, v in book.items():
        cols[k] = pa.array(v)
        features[k] = {"dtype": str(v.dtype), "shape": [1], "names": None}
        stats[k] = _stats(v.reshape(-1, 1), image=False)
    (dst / "data" / "chunk-000").mkdir(parents=True)
    pq.write_table(pa.table(cols), dst / "data" / "chunk-000" / "file-000.parquet")

    # videos/<key>/chunk-000/file-000.mp4
    ep_cols: dict[str, list] = {}
    for k in images:
        h, w = specs[k].shape[:2]
        features[lr[k]] = {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
                           "info": {"video.height": h, "video.width": w, "video.codec": "h264", "video.pix_fmt": "yuv420p",
                                    "video.is_depth_map": False, "video.fps": fps, "video.channels": 3, "has_audio": False}}
        sample = image_to_uint8(store._array(k).get_orthogonal_selection((np.unique(np.linspace(0, N - 1, min(N, 500)).astype(int)),)))
        stats[lr[k]] = _stats(sample, image=True)
        stats[lr[k]]["count"] = [int(N)]
        arr = store._array(k)

        def frames(arr=arr) -> Iterator[np.ndarray]:
            for i in range(0, N, 256):
                for img in image_to_uint8(np.asarray(arr[i : min(i + 256, N)])):
                    yield img

        _encode_video(interruptible(frames(), total=N, desc=f"encode {k}", disable=not progress, leave=False),
                      dst / "videos" / lr[k] / "chunk-000" / "file-000.mp4", fps, crf)
        ep_cols[f"videos/{lr[k]}/chunk_index"] = [0] * E
        ep_cols[f"videos/{lr[k]}/file_index"] = [0] * E
        ep_cols[f"videos/{lr[k]}/from_timestamp"] = (starts / fps).tolist()
        ep_cols[f"videos/{lr[k]}/to_timestamp"] = ((starts + lengths) / fps).tolist()
    if images:
        report.notes.append(f"images {images} encoded as H.264 videos (crf {crf}: lossy unless 0)")

    # meta/
    (dst / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    episodes = {"episode_index": list(range(E)), "tasks": [[t] for t in tasks_per_ep], "length": lengths.tolist(),
                "data/chunk_index": [0] * E, "data/file_index": [0] * E,
                "dataset_from_index": starts.tolist(), "dataset_to_index": (starts + lengths).tolist(), **ep_cols,
                "meta/episodes/chunk_index": [0] * E, "meta/episodes/file_index": [0] * E}
    pq.write_table(pa.table(episodes), dst / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    t = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "__index_level_0__": pa.array(tasks, pa.string())})
    pq.write_table(t.replace_schema_metadata({b"pandas": json.dumps(_TASKS_PANDAS).encode()}), dst / "meta" / "tasks.parquet")
    (dst / "meta" / "stats.json").write_text(json.dumps(stats, indent=1))
    info = {"codebase_version": "v3.0", "robot_type": store.attrs.get("lerobot", {}).get("robot_type") or store.attrs.get("robot_type"),
            "total_episodes": E, "total_frames": N, "total_tasks": len(tasks), "chunks_size": 1000,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": fps, "splits": {"train": f"0:{E}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4" if images else None,
            "features": features,
            "protege": {"shapes": {lr[k]: s for k, s in shapes.items()}, "source": str(store.path),
                        "keys": {lr[k]: {f: v for f, v in store.attrs.get("keys", {}).get(k, {}).items() if f in ("unit", "frame")}
                                 for k in store.keys},
                        "episode_meta": meta}}
    (dst / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    extra = sorted({k for m in meta for k in m} - {"task"})
    if extra:
        report.notes.append(f"episode metadata {extra} and key units kept in info.json's 'protege' block "
                            f"(LeRobot itself keeps only each episode's tasks)")
    return report
