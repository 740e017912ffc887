"""The exception types the command line turns into a one-line error, and reading them back out of Ray."""

import re


class CracknetError(Exception):
    """A problem the user can act on; its message is a complete sentence."""


class StorageUnavailable(CracknetError):
    """The object store kept failing (throttling, 5xx, dropped connections) after every retry.

    Unlike a missing or undecodable image, this is not a fact about one input:
    a batch job stops on it rather than record an error row for a good image.
    """


def root_cause(exc: BaseException) -> str:
    """The sentence to show for a failure that came back through Ray.

    Ray hands a task's exception back as text inside its own exceptions: a
    cracknet sentence found anywhere in the chain wins; otherwise the innermost
    error's type and last line, not Ray's wrapping.
    """
    chain, seen = [], set()
    while isinstance(exc, BaseException) and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or getattr(exc, "cause", None) or exc.__context__
    for error in chain:
        found = re.search(r"cracknet\.errors\.\w+: (.+)", str(error))
        if found:
            return found.group(1).strip()
    innermost = chain[-1]
    lines = str(innermost).strip().splitlines()
    return f"{type(innermost).__name__}: {lines[-1] if lines else ''}".strip()
