"""The batching core: messages in, micro-batches through the model, results out.

:mod:`~worker.batching.scheduler` closes micro-batches (count, token budget, wait) and bounds how many
are in flight; :mod:`~worker.batching.pipeline` decodes, classifies and builds results and dead letters.
"""
