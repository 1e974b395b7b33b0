import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_thread):
    """Every training test runs on one torch thread (tests/conftest.py `one_thread`)."""
    yield
