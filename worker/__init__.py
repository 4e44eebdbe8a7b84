"""The Faust worker: Kafka I/O, micro-batching, publishing, metrics and the CLI."""
