"""The one exception type the command line turns into a one-line error."""


class CracknetError(Exception):
    """A problem the user can act on; its message is a complete sentence."""


class StorageUnavailable(CracknetError):
    """The object store kept failing (throttling, 5xx, dropped connections) after every retry.

    Unlike a missing or undecodable image, this is not a fact about one input:
    a batch job stops on it rather than record an error row for a good image.
    """
