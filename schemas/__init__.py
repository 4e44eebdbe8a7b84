"""Message contracts of the sentiment worker: input reviews, results, dead letters, errors.

The models here are the single source of the JSON Schema files beside them
(``python -m schemas.generate`` rewrites them; a test keeps them in sync).
"""
