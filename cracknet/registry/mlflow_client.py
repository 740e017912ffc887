"""The MLflow client both tracking and the registry use: one per tracking URI, its calls bounded in time, its
failures told as sentences without the URI's secrets.

    mlflow = client(tracking_uri(flag))       # --mlflow, else MLFLOW_TRACKING_URI
"""

from __future__ import annotations

import os
import re

from cracknet.errors import CracknetError
from cracknet.screen import first_line, redact_text


def tracking_uri(flag: str | None) -> str | None:
    """The tracking URI: the flag, else ``MLFLOW_TRACKING_URI``; None when neither is set (no tracking)."""
    return flag or os.environ.get("MLFLOW_TRACKING_URI") or None


def client(uri: str):
    """An MLflow client of ``uri`` (tracking and registry alike), refused in a sentence when MLflow is missing."""
    import logging

    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise CracknetError("Tracking needs MLflow: pip install 'cracknet[mlflow]'.") from None
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines (creating tables, waiting) are not ours
    for name, value in MLFLOW_DEADLINES.items():  # an operator's own settings win
        os.environ.setdefault(name, value)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# MLflow's own defaults give one call 120 s per request and 7 retries with backoff (many minutes against a server
# that hangs); these bound a call to about three minutes: 20 s per request, 5 retries 2 to 32 s apart.
MLFLOW_DEADLINES = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "20", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5",
                    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2"}


def reason(exc: BaseException, *secrets: str) -> str:
    """An MLflow failure as one sentence (its messages run to tracebacks of the server's), with every URL in it
    redacted and ``secrets`` (the tracking URI: credentials, tokens) cut out wherever MLflow quotes them."""
    text = redact_text(first_line(exc), *secrets)
    return text if text.endswith(".") else text + "."


def unavailable(exc: BaseException) -> bool:
    """Whether an MLflow failure is the server being out of reach (refused, timed out, 5xx after MLflow's own
    retries), which a later try may not meet, rather than an answer about the request."""
    text = str(getattr(exc, "message", None) or exc)
    return bool(re.search(r"Max retries exceeded|Connection refused|Failed to establish a new connection|timed out|"
                          r"Read timed out|too many 5\d\d error responses|status code 5\d\d|"
                          r"Temporary failure in name resolution", text))
