"""Tiny stand-ins for the hub's Qwen3 repositories, built locally from ``Qwen3Config``.

:mod:`~models.bases.hub_layouts` (each repository's published shape and files),
:mod:`~models.bases.hub_like` (``sentiment base tiny``: the same layout, small widths, random weights)
and :mod:`~models.bases.tiny` (the smallest checkpoints and bases the tests use).
"""
