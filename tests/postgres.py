"""A real PostgreSQL server for the tests: its own throwaway cluster (bench/pgserver.py), one
per session, on 127.0.0.1. ``postgres_url`` is a fresh database per test (DBOS creates it), so
tests never share state.

Without the server binaries the tests that use it are skipped, naming the Debian package; with
``CI`` set they fail instead (CI installs it: .ci/run), so a missing server never passes
silently. The server itself is bench/pgserver.py (the durable_cost benchmark starts it too)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from bench.pgserver import PostgresServer


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    # imported here: conftest imports this module, and a copy of tests/ alone must still load
    from bench.pgserver import PostgresServer, missing_reason

    reason = missing_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Postgres tests: {reason}", pytrace=False)
        pytest.skip(reason)
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """``postgresql://postgres:PW@127.0.0.1:PORT/agentloop_<random>``: a database no other
    test uses (it does not exist yet; DBOS creates the database named in the URL)."""
    return postgres_server.fresh_url()
