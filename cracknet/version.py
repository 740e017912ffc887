"""The package's version, in one place: the CLI's ``--version``, model cards and runs records all read it here."""

__version__ = "0.2.0"
