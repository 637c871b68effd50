"""The wardstream dashboards, one module per board; ``all_dashboards()`` in menu order."""

from __future__ import annotations

from grafana.boards import departments, experience, finance, high_risk, model_health, overview, providers
from grafana.model import Dashboard

BOARDS = (overview, departments, providers, high_risk, finance, experience, model_health)


def all_dashboards() -> list[Dashboard]:
    boards = [module.board() for module in BOARDS]
    uids = [b.uid for b in boards]
    if len(set(uids)) != len(uids):
        raise ValueError(f"duplicate dashboard uids: {uids}")
    return boards
