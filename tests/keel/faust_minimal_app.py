"""A minimal Faust app (RocksDB store through rocksdict): the agent counts words per key in a
table and produces each new count. Run as a worker by test_faust_roundtrip.py."""

from __future__ import annotations

import os
import sys

import faust

app = faust.App(
    os.environ["FAUST_APP_ID"],
    broker=f"kafka://{os.environ['KEEL_BOOTSTRAP_SERVERS'].split(',')[0]}",
    store="rocksdb://",
    datadir=os.environ["FAUST_DATADIR"],
    topic_partitions=1,
    topic_replication_factor=1,
    web_enabled=False,
    consumer_auto_offset_reset="earliest",
)
source = app.topic(os.environ["FAUST_IN"], key_type=bytes, value_type=bytes, value_serializer="raw")
sink = app.topic(os.environ["FAUST_OUT"], key_type=bytes, value_type=bytes, value_serializer="raw")
counts = app.Table("counts", default=int, partitions=1)


@app.agent(source)
async def count(stream: faust.Stream) -> None:
    async for key, value in stream.items():
        word = value.decode()
        counts[word] += 1
        await sink.send(key=key, value=f"{word}={counts[word]}".encode())


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn", "--without-web"]
    app.main()
