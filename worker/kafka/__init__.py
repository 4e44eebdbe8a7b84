"""The Kafka edge: aiokafka in and out, offsets committed only behind finished work.

:mod:`~worker.kafka.consumer` (``getmany`` into micro-batches, rebalances),
:mod:`~worker.kafka.publisher` (results and dead letters), :mod:`~worker.kafka.offsets` (what is safe
to commit), :mod:`~worker.kafka.lag`, :mod:`~worker.kafka.clients` (the CLI's produce/tail),
:mod:`~worker.kafka.security` (TLS/SASL) and :mod:`~worker.kafka.admin` (topics, the connection check).
"""
