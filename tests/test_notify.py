"""The webhook receives each alert exactly once: through 500s, duplicates on the topic, re-runs."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest

from consumers.migrate import MIGRATIONS_DIR, migrate
from consumers.notify import build_payload, run_notifier
from contracts.events import Alert, Topics, dump
from test_sink_support import reset_group, sink_db  # noqa: F401  (fixture)
from webhook import Webhook
from wardstream.kafka_io import ensure_topics, make_producer

T0 = datetime(2025, 2, 1, tzinfo=timezone.utc)


def _alert(i: int) -> Alert:
    return Alert(alert_id=f"alert-E{i}", encounter_id=f"E{i}", patient_id=f"P{i}", facility_id="F01",
                 department="Cardiology", attending_provider_id="D1", discharged_at=T0 + timedelta(hours=i),
                 score=0.5 + i / 100, lace=11, threshold=0.3, reasons=["LACE index 11 (high)", "3 prior admissions"])


def _produce(namespace: str, alerts: list[Alert]) -> None:
    topic = Topics(namespace).alerts
    ensure_topics([topic])
    p = make_producer()
    for a in alerts:
        p.send(topic, key=a.encounter_id.encode(), value=dump(a))
    p.flush()
    p.close()


def _deliveries(url: str) -> dict[str, tuple]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT encounter_id, status, attempts, last_error, delivered_at IS NOT NULL "
                    "FROM alert_deliveries")
        rows = {r[0]: r[1:] for r in cur.fetchall()}
    conn.close()
    return rows


def test_payload_has_ids_scores_and_reasons_only() -> None:
    payload = build_payload(_alert(1))
    text = json.dumps(payload)
    assert payload["text"].startswith("High readmission risk: encounter E1")
    for needle in ("alert-E1", "P1", "Cardiology", "0.51", "LACE", "3 prior admissions"):
        assert needle in text
    assert {"text", "blocks"} == set(payload)


@pytest.mark.e2e
def test_each_alert_is_delivered_exactly_once(kafka_ns, sink_db) -> None:
    alerts = [_alert(i) for i in range(1, 5)]
    _produce(kafka_ns, alerts + [alerts[1], alerts[2]])  # two alerts appear twice on the topic
    with Webhook(fail_first=2) as hook:
        stats = run_notifier(url=hook.url, once=True, backoff_initial=0.01, backoff_max=0.05)
        keys = [d["key"] for d in hook.delivered]
        assert sorted(keys) == sorted(a.alert_id for a in alerts)  # once each, none twice
        assert len(hook.requests) == len(alerts) + 2  # the two 500s were retried
        assert stats.delivered == 4 and stats.duplicates == 2 and stats.failed == 0
        rows = _deliveries(sink_db)
        assert {e: r[0] for e, r in rows.items()} == {a.encounter_id: "delivered" for a in alerts}
        assert sum(r[1] for r in rows.values()) == len(alerts) + 2
        assert all(r[3] for r in rows.values())

        # the same offsets again (group reset) and a restart: nothing is sent twice
        reset_group(f"{kafka_ns}wardstream-notifier", [Topics(kafka_ns).alerts])
        again = run_notifier(url=hook.url, once=True, backoff_initial=0.01)
        assert again.messages == 6 and again.delivered == 0 and again.duplicates == 6
        assert len(hook.delivered) == len(alerts)


@pytest.mark.e2e
def test_a_dead_webhook_records_failed_then_retry_failed_delivers(kafka_ns, sink_db) -> None:
    _produce(kafka_ns, [_alert(7)])
    with Webhook(always_fail=True) as hook:
        stats = run_notifier(url=hook.url, once=True, max_attempts=3, backoff_initial=0.01, backoff_max=0.02)
        assert stats.failed == 1 and len(hook.requests) == 3
    assert _deliveries(sink_db)["E7"][:3] == ("failed", 3, "HTTP 500")
    # The alert row is what --retry-failed re-sends (written by the sink from hospital.alerts).
    from consumers.sink import run_sink
    run_sink(once=True, topics=[Topics(kafka_ns).alerts])
    with Webhook() as hook:
        stats = run_notifier(url=hook.url, once=True, retry_failed=True, backoff_initial=0.01)
        assert [d["key"] for d in hook.delivered] == ["alert-E7"]
    assert _deliveries(sink_db)["E7"][:2] == ("delivered", 4)


def test_cli_notify_needs_a_webhook(monkeypatch) -> None:
    from typer.testing import CliRunner

    from wardstream.cli import app

    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    runner = CliRunner()
    missing = runner.invoke(app, ["notify", "--once"])
    assert missing.exit_code == 2 and "ALERT_WEBHOOK_URL" in missing.output
    bad = runner.invoke(app, ["notify", "--once", "--url", "ftp://x"])
    assert bad.exit_code == 2 and "http(s)" in bad.output


@pytest.mark.e2e
def test_ledger_rows_from_before_v014_keep_their_discharge(fresh_db, tmp_path, kafka_ns) -> None:
    """V014 gives each ledger row its discharge: from the stored alert, else '-infinity' (any
    discharge of the encounter). Neither kind of old row is delivered again on a replay; a later
    discharge of the encounter is."""
    old = tmp_path / "migrations"
    old.mkdir()
    for f in MIGRATIONS_DIR.glob("*.sql"):
        if int(f.name[1:4]) < 14:
            shutil.copy(f, old / f.name)
    migrate(fresh_db, old)
    stored, unstored = _alert(1), _alert(2)
    with psycopg2.connect(fresh_db) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO alerts (alert_id, encounter_id, patient_id, facility_id, department, "
                    "attending_provider_id, discharged_at, score, lace, threshold, reasons, "
                    "source_partition, source_offset) VALUES (%s, %s, 'P1', 'F01', 'Cardiology', 'D1', "
                    "%s, 0.5, 11, 0.3, '{}', 0, 0)", (stored.alert_id, stored.encounter_id, stored.discharged_at))
        for a in (stored, unstored):
            cur.execute("INSERT INTO alert_deliveries (encounter_id, alert_id, status, delivered_at) "
                        "VALUES (%s, %s, 'delivered', now())", (a.encounter_id, a.alert_id))
    conn.close()
    assert migrate(fresh_db).applied[0] == "V014__alert_ledger_per_discharge.sql"
    with psycopg2.connect(fresh_db) as conn, conn.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")
        cur.execute("SELECT encounter_id, discharged_at::text FROM alert_deliveries ORDER BY 1")
        assert cur.fetchall() == [("E1", "2025-02-01 01:00:00+00"), ("E2", "-infinity")]
    conn.close()
    later = stored.model_copy(update={"discharged_at": stored.discharged_at + timedelta(days=2)})
    _produce(kafka_ns, [stored, unstored, later])
    with Webhook() as hook:
        run_notifier(url=hook.url, once=True, backoff_initial=0.01, backoff_max=0.05, db_url=fresh_db,
                     handle_signals=False)
    assert [d["key"] for d in hook.delivered] == ["alert-E1@2025-02-03T01:00:00Z"]
