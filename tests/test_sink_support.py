"""Shared helpers of the sink / SQL / notifier tests (fixtures are imported by those modules)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from kafka.structs import OffsetAndMetadata, TopicPartition

from consumers.migrate import migrate
from wardstream.config import settings
from wardstream.kafka_io import make_consumer


def role_url(db_url: str, role: str, password: str) -> str:
    u = urlsplit(db_url)
    return f"postgresql://{role}:{password}@{u.hostname}:{u.port or 5432}{u.path}"


@pytest.fixture()
def sink_db(fresh_db, monkeypatch) -> str:
    """A fresh migrated database; the sink and notifier connect as ``wardstream_sink``."""
    migrate(fresh_db)
    monkeypatch.setenv("SINK_DATABASE_URL", role_url(fresh_db, "wardstream_sink", settings().sink_password))
    return fresh_db


def reset_group(group: str, topics: list[str]) -> None:
    """Commit offset 0 on every partition of ``topics`` for ``group`` (a consumer-group reset)."""
    consumer = make_consumer(group_id=group)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        consumer.commit({tp: OffsetAndMetadata(0, "", -1) for tp in tps})
    finally:
        consumer.close(autocommit=False)
