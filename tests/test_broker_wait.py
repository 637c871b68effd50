"""wardstream.kafka_io.broker_call: which broker states are waited out, which fail at once, and the
one-line message at the limit. No broker needed (the limit case talks to a closed port)."""

from __future__ import annotations

import socket
import time

import pytest
from confluent_kafka import KafkaError, KafkaException
from kafka.errors import (
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    InvalidTopicError,
    LeaderNotAvailableError,
    KafkaTimeoutError,
    NotCoordinatorError,
    TopicAuthorizationFailedError,
)

from wardstream.config import scoped_env
from wardstream.kafka_io import BrokerUnavailable, broker_call, is_wait, make_admin


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("exc", [
    CoordinatorNotAvailableError(), CoordinatorLoadInProgressError(), NotCoordinatorError(),
    LeaderNotAvailableError(), KafkaTimeoutError("Unable to bootstrap from 127.0.0.1:9092"),
    KafkaException(KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)),
    KafkaException(KafkaError(KafkaError._ALL_BROKERS_DOWN)),
    KafkaException(KafkaError(KafkaError._TRANSPORT)),
])
def test_starting_broker_states_are_waits(exc: BaseException) -> None:
    assert is_wait(exc)


@pytest.mark.parametrize("exc", [
    TopicAuthorizationFailedError(), InvalidTopicError(), ValueError("bad setting"),
    KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)),
    KafkaException(KafkaError(KafkaError._INVALID_ARG)),
])
def test_real_errors_are_not_waits(exc: BaseException) -> None:
    assert not is_wait(exc)


def test_waits_out_a_loading_coordinator_then_returns() -> None:
    calls = []

    def group_offsets() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise CoordinatorLoadInProgressError("GROUP/demo.wardstream-stream")
        return "offsets"

    assert broker_call("group offsets", group_offsets, limit=10) == "offsets"
    assert len(calls) == 3 and calls[-1] - calls[0] < 3  # bounded backoff: 0.2 s, 0.4 s


def test_a_real_error_fails_at_once() -> None:
    calls = []

    def refused() -> None:
        calls.append(1)
        raise TopicAuthorizationFailedError("hospital.adt")

    with pytest.raises(TopicAuthorizationFailedError):
        broker_call("topic creation", refused, limit=10)
    assert calls == [1]


def test_limit_gives_one_line_naming_what_was_waited_for() -> None:
    def never() -> None:
        raise CoordinatorNotAvailableError("FindCoordinatorResponse error for GROUP/g")

    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as info:
        broker_call("the offsets of consumer group g", never, limit=1.5)
    assert 1.0 <= time.monotonic() - started < 4
    line = str(info.value)
    assert "\n" not in line and "the offsets of consumer group g" in line
    assert "waited 1.5 s for the offsets of consumer group g" in line
    assert "CoordinatorNotAvailableError" in line and info.value.__cause__ is None


def test_unreachable_broker_fails_after_the_limit() -> None:
    port = closed_port()
    with scoped_env(KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}", WARDSTREAM_BROKER_WAIT_S="3"):
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as info:
            make_admin()
    assert time.monotonic() - started < 30
    line = str(info.value)
    assert "\n" not in line and f"127.0.0.1:{port}" in line and "an admin connection" in line
