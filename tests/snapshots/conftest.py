import pytest

from tests.snapshots.helpers import make_snapshot


@pytest.fixture
def snapshot():
    return make_snapshot()
