"""The classifier engine: a checkpoint directory in, labels out. What the worker runs.

:mod:`~models.engine.classifier` (the :class:`Classifier` protocol, one engine per checkpoint kind,
:func:`load_classifier`) reads the checkpoint with :mod:`~models.engine.loading` and
:mod:`~models.engine.heads`, cuts a call's texts into forward passes and packs each pass padding-free
(:mod:`~models.engine.packing`, :mod:`~models.engine.attention`) and keeps
fp32 results batch-invariant (:mod:`~models.engine.invariant`).
"""
