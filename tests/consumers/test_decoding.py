"""A job's bytes through the registry: an outage is waited out (the worker hands the job
back when stopping), a schema the registry does not know is a dead letter."""

from __future__ import annotations

import threading

import pytest

from keel.backoff import Backoff
from keel.consumers.decoding import avro_decoder
from keel.consumers.errors import UndecodableJob
from keel.deadletters import Failure
from keel.runtime import decode_with_retry
from keel.schemas.wire import frame
from keel.settings import KeelSettings

JOB = frame(987_654, b"\x00")  # Keel's wire format; no registry knows schema 987654


def test_a_registry_that_does_not_answer_is_an_outage_not_a_bad_job(refused_port: int) -> None:
    nowhere = f"http://127.0.0.1:{refused_port}"  # nothing listens there
    decoder = avro_decoder(KeelSettings(schema_registry_url=nowhere))
    with pytest.raises(UndecodableJob) as raised:
        decoder.record_name(JOB)
    assert raised.value.retriable
    stop = threading.Event()
    stop.set()  # the worker is stopping: the job is handed back, not dead-lettered
    got = decode_with_retry(decoder.record_name, JOB, stop, (UndecodableJob,), Backoff(1.0))
    assert got is None


def test_an_unknown_schema_id_is_a_dead_letter(schema_registry: str) -> None:
    decoder = avro_decoder(KeelSettings(schema_registry_url=schema_registry))
    got = decode_with_retry(
        decoder.record_name, JOB, threading.Event(), (UndecodableJob,), Backoff(1.0)
    )
    assert isinstance(got, Failure)
    assert "unknown schema id 987654" in got.message
    assert got.error_class == "keel.consumers.errors.UndecodableJob"
