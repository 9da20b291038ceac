import sys
from pathlib import Path

import pytest

# The tests run the source tree (make test-clients sets PYTHONPATH too); support.py sits here.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import Broker  # noqa: E402


@pytest.fixture
def broker():
    b = Broker(shards=2)
    yield b
    b.stop()
