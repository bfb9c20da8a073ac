"""Shared fixtures. The loopback S3 server lives in s3_server.py (loaded as a plugin)."""

from pathlib import Path

import pytest

pytest_plugins = ["s3_server", "llm_fixtures"]

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


#: ``@pytest.mark.parametrize("device", DEVICES)``: every such test runs on the CPU, and again
#: on CUDA where a GPU is visible (marker ``gpu``; ``pytest -m gpu`` runs only those)
DEVICES = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not __import__("torch").cuda.is_available(),
                                        reason="no CUDA device visible: the gpu variant runs "
                                        "on a machine with one")])]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public data sets (``../shared/data`` from the project root); skip if absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not present: {SHARED_DATA} is missing (real-data tests "
                    f"run where the shared data sets are mounted, e.g. CI)")
    return SHARED_DATA
