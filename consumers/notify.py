"""``wardstream notify``: deliver each high-risk discharge alert once to a webhook.

Reads ``hospital.alerts``; for each alert, one transaction holds its discharge's row of
``alert_deliveries`` (created ``pending`` on first sight, locked ``FOR UPDATE``): a discharge
already ``delivered`` is skipped (duplicates on the topic, replays, restarts), otherwise the alert
is POSTed with retries and exponential backoff (tenacity) and the outcome is recorded
(``delivered`` + ``delivered_at``, or ``failed`` + ``last_error``; ``attempts`` counts POSTs).
Kafka offsets are committed only after the statuses are recorded. A ``failed`` one is tried
again when its alert is seen again (``--retry-failed`` re-sends every failed one from the table).

Exactly once, except in one window: a crash after the webhook answered 2xx but before the status
commit re-sends that alert on restart; every POST carries ``Idempotency-Key: <alert_id>`` so a
receiver can drop it. HTTP goes through the standard library (``urllib.request``): no dependency.
The payload is Slack-style (``text`` + ``blocks``) and carries ids, department, score, LACE and
the reasons in plain words; never a name (the contract has none).

Retractions (DESIGN.md "Withdrawals"): an alert marked ``withdrawn`` (its discharge was
cancelled) is delivered once too, through its own ledger ``alert_retractions`` (by alert_id,
migration V011), with ``Idempotency-Key: <alert_id>:withdrawn``; only when the alert itself was
delivered (else there is nothing to retract: recorded ``skipped``).

Both ledgers hold one row per *discharge* of an encounter (``discharged_at``, migration V014): a
patient discharged again after a cancelled discharge gets a new alert under the same alert_id,
and it is delivered (and its retraction, if any) like the first, with the discharge time in the
idempotency key (:func:`idempotency_key`) so that a receiver does not drop it as a repeat.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

from typing import Any

import psycopg2
from pydantic import ValidationError
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from consumers.db import TRANSIENT_ERRORS, close_quietly, connect, libpq_url, sink_url
from consumers.sink import stop_on_signals
from contracts.events import Alert, Topics, format_ts
from wardstream.config import settings
from wardstream.kafka_io import GroupMember, end_offsets_of, ensure_topics, make_consumer, next_offsets

log = logging.getLogger(__name__)


class WebhookError(Exception):
    """A delivery attempt failed; ``permanent`` when retrying cannot help (4xx but 408/429)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def build_payload(alert: Alert) -> dict[str, Any]:
    """Slack-style message for one alert (ids and scores only: minimum necessary data).

    >>> from datetime import datetime, timezone
    >>> a = Alert(alert_id="alert-E1", encounter_id="E1", patient_id="P1", facility_id="F01",
    ...           department="Cardiology", attending_provider_id="D1",
    ...           discharged_at=datetime(2025, 3, 1, 12, tzinfo=timezone.utc), score=0.41,
    ...           lace=12, threshold=0.3, reasons=["LACE index 12 (high)"])
    >>> build_payload(a)["text"]
    'High readmission risk: encounter E1 (Cardiology, F01), score 0.41 >= threshold 0.30, LACE 12'
    """
    text = (f"High readmission risk: encounter {alert.encounter_id} ({alert.department}, "
            f"{alert.facility_id}), score {alert.score:.2f} >= threshold {alert.threshold:.2f}, "
            f"LACE {alert.lace}")
    fields = [
        ("Encounter", alert.encounter_id), ("Patient id", alert.patient_id),
        ("Department", alert.department), ("Facility", alert.facility_id),
        ("Attending", alert.attending_provider_id), ("Discharged", format_ts(alert.discharged_at)),
        ("Score", f"{alert.score:.2f} (threshold {alert.threshold:.2f})"), ("LACE", str(alert.lace)),
    ]
    reasons = "\n".join(f"• {r}" for r in alert.reasons) or "• (no reason given)"
    return {
        "text": text,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "High readmission risk at discharge"}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in fields]},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Reasons*\n{reasons}"}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"alert_id {alert.alert_id}"}]},
        ],
    }


def build_retraction(alert: Alert) -> dict[str, Any]:
    """Slack-style message withdrawing a delivered alert.

    >>> from datetime import datetime, timezone
    >>> a = Alert(alert_id="alert-E1", encounter_id="E1", patient_id="P1", facility_id="F01",
    ...           department="Cardiology", attending_provider_id="D1",
    ...           discharged_at=datetime(2025, 3, 1, 12, tzinfo=timezone.utc), score=0.41,
    ...           lace=12, threshold=0.3, reasons=[], withdrawn=True)
    >>> build_retraction(a)["text"]
    'Withdrawn: the high readmission risk alert for encounter E1 (Cardiology, F01); its discharge was cancelled'
    """
    text = (f"Withdrawn: the high readmission risk alert for encounter {alert.encounter_id} "
            f"({alert.department}, {alert.facility_id}); its discharge was cancelled")
    return {"text": text, "withdrawn": True, "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"alert_id {alert.alert_id} (withdrawn)"}]},
    ]}


def idempotency_key(alert: Alert, again: bool = False) -> str:
    """The ``Idempotency-Key`` of an alert's delivery: its alert_id, or for a retraction
    ``<alert_id>:withdrawn``; ``again`` (an earlier discharge of the encounter has a ledger
    row) adds the discharge time, so a receiver keeps a later discharge's alert.

    >>> from datetime import datetime, timezone
    >>> a = Alert(alert_id="alert-E1", encounter_id="E1", patient_id="P1", facility_id="F01",
    ...           department="Cardiology", attending_provider_id="D1",
    ...           discharged_at=datetime(2025, 3, 1, 12, tzinfo=timezone.utc), score=0.41,
    ...           lace=12, threshold=0.3, reasons=[])
    >>> idempotency_key(a), idempotency_key(a, again=True)
    ('alert-E1', 'alert-E1@2025-03-01T12:00:00Z')
    >>> idempotency_key(a.model_copy(update={"withdrawn": True}), again=True)
    'alert-E1@2025-03-01T12:00:00Z:withdrawn'
    """
    key = f"{alert.alert_id}@{format_ts(alert.discharged_at)}" if again else alert.alert_id
    return f"{key}:withdrawn" if alert.withdrawn else key


def post_json(url: str, payload: dict[str, Any], idempotency_key: str, timeout: float = 10.0) -> None:
    """POST ``payload``; raises :class:`WebhookError` unless the answer is 2xx."""
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), method="POST",
        headers={"Content-Type": "application/json", "Idempotency-Key": idempotency_key,
                 "User-Agent": "wardstream-notifier"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        raise WebhookError(f"HTTP {exc.code}", permanent=400 <= exc.code < 500 and exc.code not in (408, 429)) from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        raise WebhookError(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from exc


@dataclass
class NotifyStats:
    messages: int = 0
    delivered: int = 0
    duplicates: int = 0  # alerts of encounters already delivered: skipped
    failed: int = 0
    attempts: int = 0  # HTTP POSTs made
    invalid: int = 0
    commits: int = 0
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


class Notifier:
    """Delivers alerts through the ``alert_deliveries`` ledger (one connection, reconnecting)."""

    def __init__(self, url: str, db_url: str, stats: NotifyStats, stop: threading.Event,
                 max_attempts: int = 5, backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 timeout: float = 10.0, post: Callable[..., None] = post_json) -> None:
        self.url, self.db_url, self.stats, self.stop = url, db_url, stats, stop
        self.max_attempts, self.backoff_initial, self.backoff_max = max_attempts, backoff_initial, backoff_max
        self.timeout, self.post = timeout, post
        self.conn = None

    def close(self) -> None:
        close_quietly(self.conn)
        self.conn = None

    def handle(self, alert: Alert) -> str:
        """Deliver unless already delivered; returns the recorded status. Retries database outages."""
        for attempt in Retrying(retry=retry_if_exception(lambda e: isinstance(e, TRANSIENT_ERRORS)),
                                wait=wait_exponential(multiplier=0.2, max=10),
                                stop=lambda _s: self.stop.is_set(), reraise=True):
            with attempt:
                return self._handle_once(alert)
        raise AssertionError("unreachable")

    def _handle_once(self, alert: Alert) -> str:
        if self.conn is None or self.conn.closed:
            self.conn = connect(self.db_url, "wardstream-notifier")
        conn = self.conn
        # an alert's ledger row is its encounter's discharge's; a retraction's is its alert_id's
        ledger, col, key = (("alert_retractions", "alert_id", alert.alert_id) if alert.withdrawn
                            else ("alert_deliveries", "encounter_id", alert.encounter_id))
        try:
            with conn.cursor() as cur:
                row = self._ledger_row(cur, ledger, col, key, alert)
                if row is None:
                    cur.execute(f"INSERT INTO {ledger} (encounter_id, alert_id, discharged_at, status) "
                                f"VALUES (%s, %s, %s, 'pending') ON CONFLICT ({col}, discharged_at) DO NOTHING",
                                (alert.encounter_id, alert.alert_id, alert.discharged_at))
                    row = self._ledger_row(cur, ledger, col, key, alert)
                status, discharged_at, again = row
                where = f"WHERE {col} = %s AND discharged_at = %s"
                if status in ("delivered", "skipped"):
                    conn.commit()
                    self.stats.duplicates += 1
                    return status
                if alert.withdrawn and not self._was_delivered(cur, alert):
                    cur.execute(f"UPDATE alert_retractions SET status = 'skipped', updated_at = now() {where}",
                                (key, discharged_at))
                    conn.commit()
                    return "skipped"
                attempts, error = self._deliver(alert, again)
                if error is None:
                    cur.execute(f"UPDATE {ledger} SET status = 'delivered', attempts = attempts + %s, "
                                f"delivered_at = now(), updated_at = now(), last_error = NULL {where}",
                                (attempts, key, discharged_at))
                    status = "delivered"
                    self.stats.delivered += 1
                else:
                    cur.execute(f"UPDATE {ledger} SET status = 'failed', attempts = attempts + %s, "
                                f"last_error = %s, updated_at = now() {where}",
                                (attempts, error[:500], key, discharged_at))
                    status = "failed"
                    self.stats.failed += 1
                    log.error("alert %s not delivered after %d attempts: %s", alert.alert_id, attempts, error)
            conn.commit()
            return status
        except TRANSIENT_ERRORS:
            self.close()
            raise
        except psycopg2.Error:
            conn.rollback()
            raise

    @staticmethod
    def _ledger_row(cur, ledger: str, col: str, key: str, alert: Alert) -> tuple[str, Any, bool] | None:
        """(status, discharged_at, whether another discharge of the encounter has a row) of the
        ledger row of ``alert``'s discharge, locked; None when there is none yet. A row from
        before V014 (discharged_at '-infinity') stands for any discharge."""
        cur.execute(f"SELECT status, discharged_at, discharged_at IN (%s, '-infinity') FROM {ledger} "
                    f"WHERE {col} = %s ORDER BY discharged_at FOR UPDATE", (alert.discharged_at, key))
        rows = cur.fetchall()
        mine = [r for r in rows if r[2]]
        return (mine[-1][0], mine[-1][1], len(rows) > len(mine)) if mine else None

    @staticmethod
    def _was_delivered(cur, alert: Alert) -> bool:
        """Whether the alert a retraction withdraws (the same discharge's) reached the webhook."""
        cur.execute("SELECT 1 FROM alert_deliveries WHERE encounter_id = %s AND status = 'delivered' "
                    "AND discharged_at IN (%s, '-infinity')", (alert.encounter_id, alert.discharged_at))
        return cur.fetchone() is not None

    def _deliver(self, alert: Alert, again: bool = False) -> tuple[int, str | None]:
        """POST with retries; (attempts made, last error or None when delivered)."""
        payload = build_retraction(alert) if alert.withdrawn else build_payload(alert)
        key = idempotency_key(alert, again)
        attempts = 0

        def once() -> None:
            nonlocal attempts
            attempts += 1
            self.stats.attempts += 1
            self.post(self.url, payload, key, timeout=self.timeout)

        try:
            for attempt in Retrying(
                    retry=retry_if_exception(lambda e: isinstance(e, WebhookError) and not e.permanent),
                    stop=stop_after_attempt(self.max_attempts),
                    wait=wait_exponential(multiplier=self.backoff_initial, max=self.backoff_max),
                    before_sleep=lambda s: log.warning("webhook attempt %d for %s failed (%s); retrying",
                                                       s.attempt_number, alert.alert_id, s.outcome.exception()),
                    reraise=True):
                with attempt:
                    once()
            return attempts, None
        except WebhookError as exc:
            return attempts, str(exc)

    def retry_failed(self) -> int:
        """Re-send every ``failed`` delivery whose alert is in the ``alerts`` table; returns the count."""
        if self.conn is None or self.conn.closed:
            self.conn = connect(self.db_url, "wardstream-notifier")
        with self.conn.cursor() as cur:
            cur.execute("SELECT a.alert_id, a.encounter_id, a.patient_id, a.facility_id, a.department, "
                        "a.attending_provider_id, a.discharged_at, a.score, a.lace, a.threshold, a.reasons "
                        "FROM alert_deliveries d JOIN alerts a ON a.alert_id = d.alert_id "
                        "AND d.discharged_at IN (a.discharged_at, '-infinity') "
                        "WHERE d.status = 'failed' ORDER BY d.encounter_id")
            cols = [c.name for c in cur.description]
            rows = [dict(zip(cols, r)) for r in cur.fetchall()]
        self.conn.commit()
        for row in rows:
            self.handle(Alert(**row))
        return len(rows)


def run_notifier(*, url: str | None = None, group: str | None = None, until_idle: float | None = None,
                 once: bool = False, max_attempts: int = 5, backoff_initial: float = 0.5,
                 backoff_max: float = 30.0, timeout: float = 10.0, db_url: str | None = None,
                 stop: threading.Event | None = None, handle_signals: bool = True,
                 retry_failed: bool = False) -> NotifyStats:
    """Consume ``hospital.alerts`` until stopped / caught up (``once``) / idle (``until_idle`` s).

    ``url`` defaults to ALERT_WEBHOOK_URL; ``group`` to ``<namespace>wardstream-notifier``;
    ``db_url`` to SINK_DATABASE_URL (else DATABASE_URL).
    """
    s = settings()
    url = url or s.alert_webhook_url
    if not url:
        raise ValueError("no webhook: set ALERT_WEBHOOK_URL or pass --url")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"webhook URL must be http(s)://..., got {url[:40]!r}")
    stop = stop or threading.Event()
    stats = NotifyStats()
    started = time.monotonic()
    topic = Topics(s.topic_namespace).alerts
    ensure_topics([topic], s)
    notifier = Notifier(url, libpq_url(db_url) if db_url else sink_url(), stats, stop,
                        max_attempts, backoff_initial, backoff_max, timeout)
    member = GroupMember(lambda: make_consumer(topic, group_id=group or f"{s.topic_namespace}wardstream-notifier",
                                               s=s, max_poll_records=200, max_poll_interval_ms=1_800_000),
                         s.group_settle_s, "notifier", "delivered alerts")
    commits = member.commits
    last_data = time.monotonic()
    end_offsets = None
    try:
        with stop_on_signals(stop) if handle_signals else nullcontext():
            if retry_failed:
                notifier.retry_failed()
            while not stop.is_set():
                if member.stuck():  # a new consumer reads on from the last committed offsets
                    member.replace()
                    end_offsets, last_data = None, time.monotonic()
                consumer = member.consumer
                polled = consumer.poll(timeout_ms=500)
                records = [r for recs in polled.values() for r in recs]
                if not records:
                    commits.commit()  # offsets a rebalance refused, if any: this poll may have completed it
                    idle = time.monotonic() - last_data
                    if until_idle is not None and idle >= until_idle:
                        break
                    if once and commits.settled:
                        assignment = consumer.assignment()
                        if assignment and end_offsets is None:
                            end_offsets = end_offsets_of(consumer, assignment)
                        if end_offsets and all(consumer.position(tp) >= e for tp, e in end_offsets.items()):
                            break
                        if idle >= 5.0:
                            break
                    continue
                last_data = time.monotonic()
                for r in records:
                    stats.messages += 1
                    try:
                        alert = Alert.model_validate_json(r.value)
                    except (ValidationError, ValueError):
                        stats.invalid += 1
                        log.warning("skipped invalid alert %s[%d]@%d", r.topic, r.partition, r.offset)
                        continue
                    notifier.handle(alert)
                commits.commit(next_offsets(records))  # refused: alerts re-read, the ledger skips them
                stats.commits = commits.commits
    except TRANSIENT_ERRORS:
        if not stop.is_set():
            raise
    finally:
        notifier.close()
        member.consumer.close(autocommit=False)
        stats.elapsed_s = time.monotonic() - started
    log.info("notifier finished: %s", stats.as_dict())
    return stats


