"""The one exception type the command line turns into a one-line error."""


class CracknetError(Exception):
    """A problem the user can act on; its message is a complete sentence."""
