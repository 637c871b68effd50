"""Table writes held back until the outputs they go with are safely in Kafka.

Both agents process a batch of messages against :class:`Staged` views of their tables, send the
outputs, wait for Kafka to acknowledge them, and only then :meth:`Staged.commit` the writes; Faust
acks the batch's offsets after that. A worker stopped or killed anywhere before the commit keeps
the state of the previous batch (whose outputs are all in Kafka) and re-processes this one: the
offset guards never skip a message whose outputs were lost, and the outputs sent again carry the
same ids and sources, which their consumers upsert or drop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

# Called with a partition around that partition's table writes (the worker sets Faust's current
# event there, since Faust files a table write under the current event's partition).
PartitionScope = Callable[[int], AbstractContextManager[Any]]

_DELETED = object()


class Staged(MutableMapping[str, Any]):
    """Writes to a table, held back until :meth:`commit`, each with the partition that made it.

    Reads see the pending writes. Set :attr:`partition` to the partition of the message being
    processed before it writes.
    """

    def __init__(self, table: MutableMapping[str, Any]) -> None:
        self.table = table
        self.partition = 0  # the partition of the message being processed (set by the flow)
        self.pending: dict[str, tuple[int, Any]] = {}

    def __getitem__(self, key: str) -> Any:
        value = self.pending[key][1] if key in self.pending else self.table[key]
        if value is _DELETED:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        if key in self.pending:
            value = self.pending[key][1]
            return default if value is _DELETED else value
        return self.table.get(key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        self.pending[key] = (self.partition, value)

    def __delitem__(self, key: str) -> None:
        self.pending[key] = (self.partition, _DELETED)

    def __iter__(self):  # the committed keys (the flows never iterate mid-batch)
        return iter(self.table)

    def items(self):  # type: ignore[override]
        """The table's items with the pending writes applied (Faust tables iterate every
        partition's store here, while a key look-up only sees the current event's partition)."""
        merged = dict(self.table.items())
        for key, (_, value) in self.pending.items():
            if value is _DELETED:
                merged.pop(key, None)
            else:
                merged[key] = value
        return merged.items()

    def __len__(self) -> int:
        return len(self.table)

    def commit(self, scope: PartitionScope | None = None) -> None:
        """Write the pending values; ``scope(partition)`` wraps the writes of each partition."""
        by_partition: dict[int, list[tuple[str, Any]]] = {}
        for key, (partition, value) in self.pending.items():
            by_partition.setdefault(partition, []).append((key, value))
        for partition, writes in by_partition.items():
            with scope(partition) if scope else nullcontext():
                self.write(self.table, ((key, self.plain(value)) for key, value in writes))
        self.pending.clear()

    @staticmethod
    def plain(value: Any) -> Any:
        """A pending value as a journal holds it: ``None`` for a deletion (no table stores None)."""
        return None if value is _DELETED else value

    @staticmethod
    def write(table: MutableMapping[str, Any], items: Iterable[tuple[str, Any]]) -> None:
        """Write ``(key, plain value)`` pairs to ``table`` (``None`` deletes the key)."""
        for key, value in items:
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value

    def rollback(self) -> None:
        self.pending.clear()
