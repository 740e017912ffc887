"""What may reach a screen or a log: URLs without their secrets, text from data without terminal control codes.

    redact("https://user:pw@hooks.example.com/services/T0/B0/XYZ?token=1")  # "https://hooks.example.com"
    line("Cannot reach http://svc:pw@mlflow:5000/?token=abc")                # "Cannot reach http://mlflow:5000"
    printable("survey/\x1b]0;owned\x07bridge")                               # "survey/?]0;owned?bridge"

Every line the command line prints passes ``line``; every URL a message names passes ``redact``.
"""

from __future__ import annotations

import re
import urllib.parse

# A URL as it appears in a message: a scheme, ://, then anything up to white space or a quote.
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>`]+")
# C0 and C1 control characters (escape sequences start with ESC or CSI), tabs and line breaks aside.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def redact(url: str) -> str:
    """A URL as it may be printed or recorded: its scheme, host and port only (webhook URLs carry their secret in
    the path, tracking URIs credentials before the host or in the query). Local paths and object-store URIs
    (``s3://bucket/key``, ``models:/name``) are locations, not secrets, and stay."""
    if url.startswith(("s3://", "models:/", "file://")):
        return url
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is no number: keep only what is surely not secret
        return f"{url.split(':', 1)[0]}://(a malformed address)"
    if not parts.scheme or not parts.netloc:
        return url
    return f"{parts.scheme}://{parts.hostname or ''}" + (f":{port}" if port else "")


def redact_text(text: str, *secrets: str) -> str:
    """``text`` with every URL in it redacted, and every further ``secrets`` (URLs whose paths, queries or
    credentials a library may quote without their scheme) cut out wherever they appear."""
    for secret in secrets:
        for piece in _secret_pieces(secret):
            text = text.replace(piece, "…")
    return _URL.sub(_redacted, text)


def _redacted(match: re.Match) -> str:
    """A URL found in text, redacted; punctuation after it ("at http://host:5000: refused") is not part of it."""
    found = match.group(0)
    url = found.rstrip(".,;:!?)]}")
    return redact(url) + found[len(url):]


def _secret_pieces(url: str) -> list[str]:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return [url]
    # A path of two or more segments may be a secret (webhooks carry theirs there: /services/T0/B0/XYZ); a
    # one-segment path (an MLflow server's /mlflow) is kept, so that messages stay readable.
    path = parts.path if len([s for s in parts.path.split("/") if s]) > 1 else ""
    pieces = [url, path, parts.query, parts.username or "", parts.password or "", parts.netloc.split("@")[0]
              if "@" in parts.netloc else ""]
    pieces += [urllib.parse.quote(p, safe="/") for p in pieces]
    return sorted({p for p in pieces if len(p) > 1}, key=len, reverse=True)


def printable(text: str) -> str:
    """Text from data (names, folder names, messages) as one line a terminal shows as it is: control characters
    and escape sequences become "?", line breaks and tabs spaces."""
    return _CONTROL.sub("?", str(text).replace("\t", " ").replace("\r", " ").replace("\n", " "))


def first_line(exc: BaseException, named: bool = False) -> str:
    """What a failure says, in one line: the first line of its message (MLflow's ``message`` where it has one),
    else its type's name; with ``named``, after its type's name (for failures that are not cracknet's sentences)."""
    text = (getattr(exc, "message", None) or str(exc) or "").strip().splitlines()
    said = text[0] if text else ""
    if named:
        return f"{type(exc).__name__}: {said}".rstrip(": ")
    return said or type(exc).__name__


def line(text: str, *secrets: str) -> str:
    """One line as the command line prints it: URLs redacted, control characters shown as "?"."""
    return printable(redact_text(text, *secrets))
