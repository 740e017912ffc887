"""Nightly scoring: images in object storage to rows in the results table, exactly once per image.

``config`` is its settings; ``inputs`` lists what to score (a prefix, a manifest, an inventory); ``planning``
subtracts what this model already committed; ``pipeline`` is the Ray Data stages (read and tile, the model on an
actor pool, write Parquet parts); ``driver`` runs them under a lease and commits; ``monitor`` and ``alerts``
judge the night and tell a webhook. Imports ``predict``, ``table`` and everything below them.
"""
