import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STORE = "pusht/pusht_cchi_v7_replay.zarr"
from protege.data.fetch import data_dir  # noqa: E402

# $PROTEGE_PUSHT, else where `protege-data fetch pusht` puts it, else data/ in the checkout, else a
# shared/ folder beside it
CANDIDATES = [os.environ.get("PROTEGE_PUSHT"), data_dir() / STORE, ROOT / "data" / STORE,
              ROOT.parent / "shared" / "data" / STORE]
PUSHT = next((Path(c) for c in CANDIDATES if c and Path(c).exists()), ROOT / "data" / STORE)


@pytest.fixture(scope="session")
def pusht_path() -> Path:
    if not PUSHT.exists():
        pytest.skip(f"PushT store not found at {PUSHT} (protege-data fetch pusht, or set PROTEGE_PUSHT)")
    return PUSHT
