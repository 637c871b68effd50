"""Shared fixtures: the real local stack, and an isolated namespace / database per test.

Tests that touch Kafka or PostgreSQL take the ``stack`` fixture (directly or through
``kafka_ns`` / ``fresh_db``); the session starts both services once, idempotently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from faults import NAMESPACES, new_namespace
from wardstream.kafka_io import delete_namespace_topics
from wardstream.stack.kafka import LocalKafka
from wardstream.stack.postgres import LocalPostgres


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that takes the stack (directly or through ``kafka_ns`` / ``fresh_db``) must carry the
    ``e2e`` mark, so ``make test-fast`` (``-m "not e2e"``) never needs a broker or a database."""
    unmarked = [item.nodeid for item in items
                if "stack" in getattr(item, "fixturenames", ()) and item.get_closest_marker("e2e") is None]
    if unmarked:
        raise pytest.UsageError("tests that use the stack need @pytest.mark.e2e: " + ", ".join(unmarked))


@pytest.fixture(scope="session")
def stack() -> Iterator[None]:
    """Bring up the real Kafka broker and PostgreSQL server (no-op when already up)."""
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        LocalKafka().up()
    LocalPostgres().up()
    yield
    # a broker that keeps every run's thousands of partitions takes minutes to start (and timed
    # out `wardstream stack up`): delete the namespaces this session made, and only those
    delete_namespace_topics(*NAMESPACES)


@pytest.fixture()
def kafka_ns(stack, monkeypatch) -> str:
    """A fresh topic namespace (prefix) for this test, so tests never see each other's data."""
    ns = new_namespace("t")
    monkeypatch.setenv("WARDSTREAM_NAMESPACE", ns)
    return ns


@pytest.fixture()
def fresh_db(stack, monkeypatch) -> Iterator[str]:
    """A new empty database for this test; DATABASE_URL points at it. Dropped afterwards."""
    with LocalPostgres().scratch_database() as url:
        monkeypatch.setenv("DATABASE_URL", url)
        yield url
