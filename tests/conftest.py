"""Test-wide setup: Prefect stays local and quiet, one Prefect test server per session."""

from __future__ import annotations

import os
import tempfile

os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="cscf-prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.pop("OPENAI_API_KEY", None)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_server():
    """A real (temporary) Prefect API for the whole session; start-up costs ~10 s once."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
