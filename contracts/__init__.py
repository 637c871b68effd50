"""The contracts every part of wardstream shares: topic names and the event / output models.

``contracts`` imports neither ``producers``, ``stream``, ``consumers`` nor ``wardstream``, so each of
them can import it without a cycle. The models live in :mod:`contracts.events`.
"""
