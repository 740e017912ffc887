"""The exception types the command line turns into a one-line error, and reading them back out of Ray."""

import re


class CracknetError(Exception):
    """A problem the user can act on; its message is a complete sentence."""


class StorageUnavailable(CracknetError):
    """The object store kept failing (throttling, 5xx, dropped connections) after every retry.

    Unlike a missing or undecodable image, this is not a fact about one input:
    a batch job stops on it rather than record an error row for a good image.
    """


class ReadRefused(CracknetError):
    """The store refused to hand over one object (access denied, a key policy, archived to Glacier): a fact about
    that object *tonight*, which a rotated key or a restore may change. Scoring records an error row that later
    runs try again; unlike ``StorageUnavailable`` it does not stop the job."""


class OutputBusy(CracknetError):
    """Another run holds the output (its lease), or took it over while this run wrote: retry later."""


class GateRefused(CracknetError):
    """The promotion gate found the candidate worse than the model in service; nothing changed."""


# Exit statuses of the command line (sysexits.h where one fits), documented in the README.
EXIT_REFUSED = 1      # the promotion gate refused the candidate
EXIT_USAGE = 2        # bad usage or bad input: retrying will not help
EXIT_BUSY = 73        # another run holds the output (EX_CANTCREAT): retry after it ends
EXIT_UNAVAILABLE = 75  # the object store kept failing (EX_TEMPFAIL): retry later
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM: stopped by the scheduler (a pod eviction, a job timeout)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwind like an interrupt (leases released, plans deleted, Ray shut down), commit nothing
    more. A KeyboardInterrupt, so that Ray's own clean-up on interrupts runs too and no ``except Exception``
    swallows it."""


def exit_status(exc: CracknetError) -> int:
    if isinstance(exc, StorageUnavailable):
        return EXIT_UNAVAILABLE
    if isinstance(exc, OutputBusy):
        return EXIT_BUSY
    if isinstance(exc, GateRefused):
        return EXIT_REFUSED
    return EXIT_USAGE


def _chain(exc: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while isinstance(exc, BaseException) and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or getattr(exc, "cause", None) or exc.__context__
    return chain


def kind_of(exc: BaseException) -> type[CracknetError]:
    """The cracknet error class behind a failure, also when it came back through Ray as text."""
    for error in _chain(exc):
        if isinstance(error, CracknetError):  # Ray's task errors subclass the task's exception class: skip them
            return next(c for c in type(error).__mro__ if c.__module__.startswith("cracknet."))
        found = re.search(r"cracknet\.errors\.(\w+): ", str(error))
        if found and isinstance(globals().get(found.group(1)), type) \
                and issubclass(globals()[found.group(1)], CracknetError):
            return globals()[found.group(1)]
    return CracknetError


def root_cause(exc: BaseException) -> str:
    """The sentence to show for a failure that came back through Ray.

    Ray hands a task's exception back as text inside its own exceptions: a
    cracknet sentence found anywhere in the chain wins (also one raised in this process, whose
    ``__context__`` may still hold the library error it replaced); otherwise the innermost
    error's type and last line, not Ray's wrapping.
    """
    chain = _chain(exc)
    for error in chain:
        found = re.search(r"cracknet\.errors\.\w+: (.+)", str(error))
        if found:
            return found.group(1).strip()
        if type(error).__module__.startswith("cracknet."):  # raised here, not carried back as text
            return str(error).strip()
    innermost = chain[-1]
    lines = str(innermost).strip().splitlines()
    return f"{type(innermost).__name__}: {lines[-1] if lines else ''}".strip()
