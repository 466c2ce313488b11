"""What a benchmark result records of where it ran: the machine in words (CPU model, threads,
GPU, torch version) and the code's commit; and where the shared PushT store lies on it."""

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def commit() -> str:
    """HEAD's SHA, with ``-dirty`` when the code (protege/, benchmarks/ but results/, pyproject.toml)
    has uncommitted changes; "unknown" outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True).stdout.strip()
        # the code's state: README edits and results written meanwhile do not make it dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "../protege", ".",
                                "../pyproject.toml", ":!results"], cwd=HERE, capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


START_COMMIT = commit()  # a benchmark imports this module as it starts
START_TIME = time.strftime("%Y-%m-%d %H:%M:%S")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} torch threads, {gpu}, torch {torch.__version__}"


def provenance() -> dict:
    """Where a figure comes from: the command line, the commit the run started from (and
    ``commit_at_end`` if the code changed while it ran), the machine, when it started and ended."""
    end = commit()
    moved = {} if end == START_COMMIT else {"commit_at_end": end}
    return {"command": shlex.join(["python", *sys.argv]), "commit": START_COMMIT, **moved,
            "machine": machine(), "started": START_TIME, "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_result(out: str | Path, benchmark: str, **fields) -> Path:
    """Write a benchmark's result JSON to ``out``: its name, the command line, the commit the run
    started from (taken when this module was imported; ``commit_at_end`` too if the code changed
    while it ran), the machine, when it started and ended (``started``, ``date``), then ``fields``
    (which may override any of these); returns the path."""
    out = Path(out)
    result = {"benchmark": benchmark, **provenance(), **fields}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return out


def pusht_store() -> str:
    """$PROTEGE_PUSHT, else the data folder (``protege-data fetch pusht``), else data/ in the
    checkout, else a shared/ folder beside the checkout: the same lookup as the tests'."""
    from protege.data.fetch import data_dir

    root, store = Path(__file__).resolve().parent.parent, "pusht/pusht_cchi_v7_replay.zarr"
    in_checkout = root / "data" / store
    for c in (os.environ.get("PROTEGE_PUSHT"), data_dir() / store, in_checkout, root.parent / "shared" / "data" / store):
        if c and Path(c).exists():
            return str(c)
    return str(in_checkout)


def run_as_the_clis_do(main) -> None:
    """``main(onednn)`` with float32 matrix products as protege-train, -eval and -deploy run them
    (``onednn_matmul=auto``, logged; ``onednn``: whether oneDNN runs them)."""
    from protege.policies.onednn import describe, onednn_matmul

    with onednn_matmul("auto") as onednn:
        print(describe(onednn), flush=True)
        main(onednn)
