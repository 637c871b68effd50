"""The bare ``faust.App`` from :class:`wardstream.config.Settings` (no topics, tables or agents).

* the app id and consumer group are ``{namespace}wardstream-stream`` (``-kpis`` for a worker
  that runs the KPI side apart: :func:`app_id`), so a replay into a fresh
  namespace (``WARDSTREAM_NAMESPACE=replay-1.``) starts from empty state with its own group,
  changelog topics (``{app id}-{table}-changelog``) and local RocksDB directory;
* the processing guarantee is ``at_least_once`` by default: the outputs are made effectively-once
  by the design (stream/README.md); Faust 0.15.3's ``exactly_once`` lost outputs on a SIGTERM stop;
* ``KAFKA_*`` security settings map to Faust's credentials; the other settings are in README.md's
  configuration table.

Nothing here runs at import: :func:`stream.app.create_worker` calls :func:`create_app` at start.
"""

from __future__ import annotations

import ssl
from typing import Any

import faust

from wardstream.config import Settings, StreamSettings

# The schema of every table: str keys, JSON values.
JSON = faust.Schema(key_type=str, key_serializer="json", value_serializer="json")


def app_id(namespace: str, role: str = "all") -> str:
    """Faust app id = consumer group id, derived from the topic namespace and the worker's role:
    the KPI side run apart (role ``kpis``) is an app of its own, with its own group and tables'
    changelogs; the ADT side (``adt``) keeps the group of a worker that runs both (``all``)."""
    return f"{namespace}wardstream-{'kpis' if role == 'kpis' else 'stream'}"


def broker_credentials(s: Settings) -> Any:
    """Faust credentials for KAFKA_SECURITY_PROTOCOL (None for PLAINTEXT)."""
    k = s.kafka
    proto = k.security_protocol.upper()
    if proto == "PLAINTEXT":
        return None
    context = ssl.create_default_context(cafile=k.ssl_cafile) if "SSL" in proto else None
    if proto.startswith("SASL"):
        if not (k.sasl_mechanism and k.sasl_username):
            raise ValueError(f"{proto} needs KAFKA_SASL_MECHANISM and KAFKA_SASL_USERNAME")
        return faust.SASLCredentials(
            username=k.sasl_username, password=k.sasl_password or "",
            mechanism=k.sasl_mechanism, ssl_context=context,
        )
    if proto == "SSL":
        return faust.SSLCredentials(context)
    raise ValueError(f"unknown KAFKA_SECURITY_PROTOCOL {k.security_protocol!r}")


def rocksdb_options(t: StreamSettings) -> dict[str, int]:
    """Options of each table's RocksDB stores.

    Faust opens one RocksDB per table partition with 64 MiB x 3 write buffers and a 2 GiB block
    cache each: memtables then hold every overwritten version up to those sizes, so the worker's
    memory grew with the number of writes (events). Our tables are small (under 1 KB per patient
    on disk, bench/README.md "Worker memory"); these caps keep RSS flat as the writes pile up.
    (Given per table: in faust-streaming 0.15.3 the app-level ``rocksdb_options`` reaches no store.)
    """
    return {
        "write_buffer_size": t.rocksdb_write_buffer_kb << 10,
        "max_write_buffer_number": 2,
        "target_file_size_base": 8 << 20,
        "block_cache_size": t.rocksdb_block_cache_kb << 10,
    }


def create_app(s: Settings) -> faust.App:
    """The bare ``faust.App`` (no topics, tables or agents); creates its state directory."""
    ns = s.topic_namespace
    port = s.stream.web_port
    datadir = s.state_dir / "faust" / app_id(ns, s.stream.role)
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        app_id(ns, s.stream.role),
        broker=[f"kafka://{h.strip()}" for h in s.kafka.bootstrap_servers.split(",") if h.strip()],
        broker_credentials=broker_credentials(s),
        # rocksdb:// uses the rocksdict driver here (python-rocksdb is not installed).
        store="rocksdb://",
        datadir=str(datadir),
        processing_guarantee=s.stream.processing_guarantee,
        topic_partitions=s.adt_partitions,
        topic_replication_factor=s.replication_factor,
        web_enabled=bool(port),
        web_port=port or 6066,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        # Our tables hold small JSON dicts; keep Faust from holding huge buffers on 2 cores.
        stream_buffer_maxsize=s.stream.stream_buffer,
        # Faust's default linger of 0 sends a produce request for almost every output message
        # (20% of the worker's time in bench/README.md); 20 ms batches them. The ADT batch's
        # journal, which it waits for, is sent at once (stream.faust_batch.JournalSends), and its
        # outputs go through a producer with a shorter linger (WARDSTREAM_EVENTS_LINGER).
        producer_linger=s.stream.producer_linger,
    )


def changelog_topics(app: faust.App) -> dict[str, tuple[int, dict[str, str]]]:
    """Each table's changelog topic with its partitions and config, to create before Faust starts
    (:func:`wardstream.kafka_io.ensure_topics`, which waits for their leaders). Faust creates
    them itself at its start, but on a cluster its consumer can then see a new changelog without
    partitions; the table's first write raises PartitionsMismatch, the crashed agent's messages
    stay unacknowledged, and the next rebalance waits for them forever."""
    return {table.changelog_topic.get_topic_name(): (table.partitions or app.conf.topic_partitions,
                                                     {"cleanup.policy": "compact"})
            for table in app.tables.values()}
