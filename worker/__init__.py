"""The worker: reviews in from Kafka, micro-batches through the model, results and dead letters out.

- :mod:`worker.kafka`: the Kafka edge (consume, publish, commit offsets, lag, clients, TLS/SASL).
- :mod:`worker.batching`: the batching core (assemble micro-batches, run them, build the results).
- :mod:`worker.app`, :mod:`worker.settings`, :mod:`worker.metrics`, :mod:`worker.health`,
  :mod:`worker.logs`, :mod:`worker.processes`, :mod:`worker.ports`: the service around them.
- :mod:`worker.commands`: the ``sentiment`` command line and its subcommands.
"""
