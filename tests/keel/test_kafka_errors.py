"""One-line errors at the Kafka edge: what a command prints when the brokers fail it."""

from __future__ import annotations

from concurrent.futures import Future

import pytest
from confluent_kafka import KafkaError, KafkaException

from keel.errors import KafkaEdgeError
from keel.kafka import kafka_call, naming_brokers
from keel.settings import KeelSettings


def test_a_broker_that_never_answers_is_named_with_the_step_and_the_wait() -> None:
    never: Future[None] = Future()
    with pytest.raises(KafkaEdgeError) as caught, kafka_call("creating topic t", 0.01):
        never.result(timeout=0.01)
    assert str(caught.value) == "creating topic t: no answer from the brokers within 0.01s"
    assert caught.value.retriable


def test_a_librdkafka_error_keeps_its_code_and_text() -> None:
    err = KafkaError(KafkaError.TOPIC_ALREADY_EXISTS, "Topic 't' already exists.")
    with pytest.raises(KafkaEdgeError) as caught, kafka_call("creating topic t", 1):
        raise KafkaException(err)
    assert caught.value.code == KafkaError.TOPIC_ALREADY_EXISTS
    assert str(caught.value) == "creating topic t: Topic 't' already exists."


def test_commands_name_the_cluster_they_could_not_reach() -> None:
    settings = KeelSettings(bootstrap_servers="k1:9092,k2:9092")
    with pytest.raises(KafkaEdgeError) as caught, naming_brokers(settings):
        raise KafkaEdgeError("listing topics: down", code=-195)
    assert str(caught.value) == "Kafka at k1:9092,k2:9092: listing topics: down"
    assert caught.value.code == -195
