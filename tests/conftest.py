"""Shared fixtures, and a header line that says which optional peers the run has, so a
skipped comparison is never silent."""
import importlib.util


def pytest_report_header(config):
    has_torch = importlib.util.find_spec("torch") is not None
    return [f"cnngen optional peers: torch "
            f"{'installed: PyTorch parity tests run' if has_torch else 'NOT installed: PyTorch parity tests are skipped'}"]


import pytest


@pytest.fixture(scope="session")
def kernel_cache(tmp_path_factory):
    """One kernel cache directory for the whole session: each kernel compiles once."""
    return tmp_path_factory.mktemp("kernels")
