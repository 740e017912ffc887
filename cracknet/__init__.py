"""cracknet: find cracks in photos of concrete and infrastructure.

Importing the package does nothing but define names; the command line
(`cracknet ...`) and the Ray job entrypoints in `jobs/` do all set-up.
"""

__version__ = "0.1.0"
