"""Making checkpoints: the LoRA and embedding-head trainers, their loop, data and evaluation.

:mod:`~models.training.data` (labelled TSV files, splits), :mod:`~models.training.loop` (the shared
training loop), :mod:`~models.training.lora` and :mod:`~models.training.head_training` (the two
trainers), :mod:`~models.training.evaluation`, :mod:`~models.training.checkpoint_eval`,
:mod:`~models.training.reporting` and :mod:`~models.training.plots` (scores, records and PNGs).
"""
