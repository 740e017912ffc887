"""The table: the Delta Lake results table, the runs table beside it, and querying them.

``results`` is the one home of the results format and its commits; ``runs`` records every scoring and
compaction run; ``query`` defines the views and runs SQL (DuckDB); ``compact`` merges small files and vacuums.
Imports only the core modules and ``storage``.
"""
