import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REL = "shared/data/pusht/pusht_cchi_v7_replay.zarr"
# $PROTEGE_PUSHT, else the shared folder beside the checkout, else the workplace's shared folder
CANDIDATES = [os.environ.get("PROTEGE_PUSHT"), ROOT.parent / REL, Path("/work") / REL]
PUSHT = next((Path(c) for c in CANDIDATES if c and Path(c).exists()), ROOT.parent / REL)


@pytest.fixture(scope="session")
def pusht_path() -> Path:
    if not PUSHT.exists():
        pytest.skip(f"PushT store not found at {PUSHT} (set PROTEGE_PUSHT)")
    return PUSHT
