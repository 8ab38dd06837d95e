"""A Confluent-compatible schema registry: the server Keel ships (`keel registry`) and the
client Keel's serde uses against it or any other Confluent-compatible registry."""
