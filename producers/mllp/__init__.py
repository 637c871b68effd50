"""HL7 v2 ADT over MLLP into ``hospital.adt`` (``wardstream mllp``).

- :mod:`~producers.mllp.framing`: MLLP frames out of a TCP byte stream (pure);
- :mod:`~producers.mllp.message`: decoding, parsing and the header of one HL7 v2 message, and
  its ACK (pure);
- :mod:`~producers.mllp.departments`: the point-of-care -> department table (configuration);
- :mod:`~producers.mllp.mapping`: ADT A01-A13, A40 -> event contract v1.1 (pure);
- :mod:`~producers.mllp.gate`: the Kafka side (a delivery acknowledged by Kafka, or an error);
- :mod:`~producers.mllp.server`: the asyncio listener that ties them together and ACKs.
"""
