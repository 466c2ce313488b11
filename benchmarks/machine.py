"""The machine a benchmark ran on, in words (CPU model, threads, GPU, torch version), and where
the shared PushT store lies on it."""

import os
import platform
from pathlib import Path

import torch


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


def pusht_store() -> str:
    """$PROTEGE_PUSHT, else the shared folder beside the checkout, else the workplace's (/work/shared):
    the same lookup as the tests'."""
    rel = "shared/data/pusht/pusht_cchi_v7_replay.zarr"
    beside = Path(__file__).resolve().parent.parent.parent / rel
    for c in (os.environ.get("PROTEGE_PUSHT"), beside, Path("/work") / rel):
        if c and Path(c).exists():
            return str(c)
    return str(beside)
