"""Keel's event contracts: the Avro catalog (`catalog/*.avsc`), envelope validation, the
Confluent wire format serde, and a Confluent-compatible schema registry (server and client).

Pure parts (`wire`, `catalog`, `envelope`) import neither Kafka nor HTTP libraries."""
