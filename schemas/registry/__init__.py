"""A Confluent-compatible schema registry: the server Keel ships (`keel registry`) and the
client Keel's serde uses against it or any other Confluent-compatible registry.

The server in layers: `app` (the REST API: parse, call, answer) over `service` (what the
registry does: reads, registration, deletes, levels; no HTTP) over `store` (the state in a
compacted topic, written and read back); `compat` checks compatibility, `auth` who may ask."""
