"""The local stack: a real Kafka from its jars, Redis and PostgreSQL from Debian's packages,
and the processes of Keel's own services, each started in the background and tracked by a
pid file under `KEEL_HOME`."""
