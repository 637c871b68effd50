"""Pure domain logic of the stream app: no Kafka, no Faust, no clock, no unseeded randomness.

Every function here is deterministic, so the Faust agents that call it give identical outputs for
identical per-partition input (see ``stream/README.md``).
"""
