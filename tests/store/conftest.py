"""Fixtures of the store's tests."""
import pytest

from tests.helpers.stores import clustered


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """3,000 clustered rows: enough for an IVF of 32 lists."""
    return clustered(3000)
