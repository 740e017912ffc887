"""Alerts: a night's findings posted to a webhook, within a deadline, never following redirects.

    post_alerts(url, alerts, run_id, output)   # one JSON POST; returns what happened as a sentence, never raises
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable

from cracknet.errors import CracknetError
from cracknet.screen import first_line, redact, redact_text

WEBHOOK_TIMEOUT, WEBHOOK_ATTEMPTS = 5.0, 3


WEBHOOK_DEADLINE = 20.0  # seconds for every attempt and the waits between them together, answers included


def check_webhook_url(url: str) -> None:
    """Refuse, before a run starts, a webhook URL that could not be posted to (the night's alerts would be lost
    after its commit): not http(s), no host, a port that is no number, white space or control characters."""
    what = "--alert-webhook must be an http:// or https:// URL with a host"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # raises on a port that is no number
    except ValueError:
        raise CracknetError(f"{what} and a numeric port; got {redact(url)}.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CracknetError(f"{what}; got {redact(url)}.")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise CracknetError(f"{what} and no spaces or control characters (percent-encode them); got {redact(url)}.")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A webhook that answers 3xx did not take the message: it is not resent elsewhere (a redirect turns the POST
    into a GET, possibly to another host), and the answer counts as not delivered."""

    def redirect_request(self, *args, **kwargs):
        return None


def alert_text(alerts: list[dict], run_id: str, output: str) -> str:
    lines = [f"cracknet: {len(alerts)} alert{'s' if len(alerts) != 1 else ''} in scoring run {run_id} ({output})"]
    return "\n".join(lines + [f"- {a['rule']}: {a['message']}" for a in alerts])


def post_alerts(url: str, alerts: list[dict], run_id: str, output: str, timeout: float = WEBHOOK_TIMEOUT,
                attempts: int = WEBHOOK_ATTEMPTS, sleep: Callable[[float], None] = time.sleep,
                deadline: float = WEBHOOK_DEADLINE) -> str:
    """POST the alerts as one JSON message; returns what happened, as a sentence. Never raises, and never takes
    longer than ``deadline`` seconds in all: an alert that cannot be delivered must not fail or hold up the run it
    is about (the run's row keeps the alerts). Each attempt, connection to the end of the answer, has ``timeout``
    seconds; redirects are not followed."""
    body = json.dumps({"text": alert_text(alerts, run_id, output),
                       "cracknet": {"run_id": run_id, "output": output, "alerts": alerts}}).encode()
    where = redact(url)
    # The proxy settings of now, not those urlopen cached process-wide; no redirects.
    opener = urllib.request.build_opener(_NoRedirects)
    ends = time.monotonic() + deadline
    last = ""
    for attempt in range(attempts):
        status, last = _post_once(opener, url, body, min(timeout, ends - time.monotonic()))
        if status is not None and 200 <= status < 300:
            return f"sent to {where}"
        if status is not None and (300 <= status < 400 or (400 <= status < 500 and status != 429)):
            break  # the hook refused the message, or sent it elsewhere: resending will not help
        pause = min(2.0 ** attempt, 10.0)
        if attempt + 1 >= attempts or time.monotonic() + pause >= ends:
            break
        sleep(pause)
    last = redact_text(last, url)
    return f"not delivered to {where} ({last}); they are in the run's row"


def _post_once(opener, url: str, body: bytes, seconds: float) -> tuple[int | None, str]:
    """One POST with ``seconds`` for all of it (a hook that drips its answer a byte at a time is cut off too):
    the HTTP status, or None and what went wrong."""
    if seconds <= 0:
        return None, "no time left"
    outcome: list = [None, ""]

    def send() -> None:
        request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
        try:
            with opener.open(request, timeout=seconds) as answer:
                answer.read(1 << 16)
                outcome[:] = [answer.status, f"HTTP {answer.status}"]
        except urllib.error.HTTPError as exc:
            outcome[:] = [exc.code, f"HTTP {exc.code}" + (", a redirect, not followed" if 300 <= exc.code < 400
                                                          else "")]
        except Exception as exc:  # noqa: BLE001 - refused, timed out, unreachable: retried, then given up
            outcome[:] = [None, first_line(exc)]

    # The request runs in a daemon thread so that the deadline holds whatever the socket does; one left
    # behind ends with the process.
    worker = threading.Thread(target=send, name="cracknet-webhook", daemon=True)
    worker.start()
    worker.join(seconds)
    return (None, f"no complete answer within {seconds:.0f} s") if worker.is_alive() else tuple(outcome)
