"""The report: one self-contained HTML page (and PNGs) about a model, an evaluation and scoring results.

``page`` is the HTML and figure plumbing; ``training`` the sections about the model and its evaluation;
``scoring`` the sections about the results table (tile maps, crack photos, nights, changes); ``build`` puts a
report together. Imports ``predict``, ``table`` and everything below them.
"""
