import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PUSHT = Path(os.environ.get("PROTEGE_PUSHT", ROOT.parent / "shared/data/pusht/pusht_cchi_v7_replay.zarr"))


@pytest.fixture(scope="session")
def pusht_path() -> Path:
    if not PUSHT.exists():
        pytest.skip(f"PushT store not found at {PUSHT} (set PROTEGE_PUSHT)")
    return PUSHT
