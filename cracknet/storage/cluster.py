"""Joining a Ray cluster, or starting a local one, with console output a person can read: shared by
training and scoring.

    ensure_ray(None)               # RAY_ADDRESS when set, else a fresh local Ray in this process
    ensure_ray("auto")             # the cluster a `ray start` runs on this machine

By default the console shows this process's own lines (cracknet's, and Ray's
warnings and errors), not the output of every worker: Ray's INFO logging, Ray
Train's INFO logging and Ray Data's progress bars are off, and workers' output
stays in Ray's log files (``/tmp/ray/session_latest/logs``) instead of being
streamed to the driver, in a local Ray and a ``ray job submit`` job alike. A
worker's failure still reaches the console as the job's one-line error.
``--verbose`` (``verbose=True``) restores Ray's defaults, and any of the standard
variables set in the environment (RAY_DATA_DISABLE_PROGRESS_BARS,
RAY_DATA_LOG_LEVEL) wins.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading

# For workers and for this process: no Ray Data progress bars, Ray Data logs from WARNING up, and no
# DeprecationWarnings of Ray's own internals (they are addressed to Ray's developers, not to an operator).
QUIET_ENVIRONMENT = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_DATA_LOG_LEVEL": "WARNING",
                     "PYTHONWARNINGS": "ignore::DeprecationWarning"}
# Notices that say nothing about this job: that token authentication is on (it always is), and that the
# progress bars this module turned off are off.
NOTICES = ("ray._private.authentication.authentication_token_setup", "ray.data._internal.progress")


def quiet_environment(verbose: bool) -> dict[str, str]:
    """The variables a quiet job sets, less those the user set themselves."""
    return {} if verbose else {k: v for k, v in QUIET_ENVIRONMENT.items() if k not in os.environ}


def train_log_level(verbose: bool) -> str:
    return "INFO" if verbose else "WARNING"


def ensure_ray(address: str | None, min_cpus: float = 0, verbose: bool = False) -> None:
    """Connect to the given (or RAY_ADDRESS) cluster, or start a local Ray in this process.

    Without an address this always starts a fresh local Ray, even when a `ray start`
    cluster runs on this machine: pass --ray-address auto to use that one.
    """
    import ray

    quiet = quiet_environment(verbose)
    os.environ.update(quiet)  # a local Ray's workers inherit them; Ray Data in this process reads them too
    if not verbose:
        for name in NOTICES:
            logging.getLogger(name).setLevel(logging.ERROR)
    _quiet_data_context(verbose)
    if ray.is_initialized():
        return
    level = logging.INFO if verbose else logging.WARNING
    address = address or os.environ.get("RAY_ADDRESS")
    with _own_sigterm_handler():
        _init(address, quiet, level, min_cpus, verbose)


@contextlib.contextmanager
def _own_sigterm_handler():
    """Keep the SIGTERM handler the command line installed (it unwinds the run, releasing its lease); Ray's
    driver replaces it with one that exits at once."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(previous) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def _init(address: str | None, quiet: dict, level: int, min_cpus: float, verbose: bool) -> None:
    import ray

    if address:
        ray.init(address=address, log_to_driver=verbose, logging_level=level,
                 runtime_env={"env_vars": quiet} if quiet else None)
    else:
        # Reserve logical CPUs for Ray Data next to the training workers on small machines.
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(min_cpus) + 1),
                 _node_ip_address="127.0.0.1", logging_level=level, log_to_driver=verbose,
                 include_dashboard=None if verbose else False)


def _quiet_data_context(verbose: bool) -> None:
    """Ray Data may have read its defaults before the variables were set: set the context itself too."""
    import ray.data

    if verbose or os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS") == "0":
        return
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(os.environ.get("RAY_DATA_LOG_LEVEL", "WARNING"))
