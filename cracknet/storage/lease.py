"""One writer at a time under an output location: a lease held by a scoring run or a compaction.

    with Lease(output, owner={"run_id": run_id, "job": "scoring"}, seconds=300):
        ...           # plan, score, write files, commit

Each commit to the results table is atomic on its own (Delta); the lease is what
keeps two runs from scoring the same images at once, and a compaction's vacuum
from deleting files that a live run has written but not yet committed.

On S3 the lease is the object ``<output>/_lease.json``, created with a
conditional write (``If-None-Match: *``), renewed every ``seconds / 4`` with
``If-Match`` on its own ETag, and deleted when the run ends. A lease that was
not renewed for ``seconds`` belongs to a run that died; the next run takes it
over with ``If-Match`` on the stale ETag, so of two runs taking over at once
exactly one wins. AWS S3, MinIO and moto support these conditions.

Time is the store's, never a writer's: a lease's age is the store's ``Date``
minus the object's ``LastModified`` (both the store's clock, to the second),
so a taker whose clock runs fast cannot take a live lease, and a dead holder
whose clock ran fast cannot block the output. The holder fences itself: it
counts its lease from the moment it *sent* its last successful renewal (its
own monotonic clock), and ``check`` -- called right before a commit -- refuses
unless that renewal leaves at least half the lease, whether or not the store
can be reached to renew again. A holder that cannot renew therefore stops
before any taker could have started. A lease file that cannot be read
(empty, not JSON) is presumed dead once it is ``seconds`` old by the store.

On local disk the lease is an exclusive ``flock`` on ``<output>/_lease``: the
kernel releases it when the process dies, so it can never go stale.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from datetime import datetime, timezone

from cracknet import storage
from cracknet.errors import CracknetError, OutputBusy
from cracknet.numbers import LEASE_SECONDS, checked

LEASE_FILE = "_lease.json"
LOCAL_LEASE_FILE = "_lease"


class LeaseLost(OutputBusy):
    pass


def _now() -> float:
    return time.time()


DEFAULT_LEASE_SECONDS = 300.0  # a run that stops renewing its lease for this long is presumed dead


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class Lease:
    def __init__(self, output: str, owner: dict, seconds: float = DEFAULT_LEASE_SECONDS):
        self.output, self.seconds = output, checked("--lease-seconds", seconds, LEASE_SECONDS)
        self.owner = {**owner, "host": socket.gethostname(), "pid": os.getpid(), "acquired_at": _now()}
        self._etag: str | None = None
        self._renewed: float | None = None  # monotonic time at which the last successful write was sent
        self._file = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- public -----------------------------------------------------------------------------------
    def acquire(self) -> "Lease":
        if storage.is_s3(self.output):
            self._acquire_s3()
            self._thread = threading.Thread(target=self._renew_forever, name="cracknet-lease", daemon=True)
            self._thread.start()
        else:
            self._acquire_local()
        return self

    def check(self) -> None:
        """Raise LeaseLost unless this run provably still holds the lease for at least half its length
        (renewing it once more on S3). Call it right before committing."""
        if storage.is_s3(self.output):
            self._renew()
        if self._lost:
            raise LeaseLost(self._lost)
        if storage.is_s3(self.output) and self.remaining() < self.seconds / 2:
            raise LeaseLost(f"This run could not renew its lease on {self.output} for "
                            f"{time.monotonic() - self._renewed:.0f} s (of a {self.seconds:.0f} s lease), so "
                            "another run may have taken it over; its results are not committed.")

    def remaining(self) -> float:
        """Seconds of the lease left for certain, counted from the sending of the last successful write."""
        if self._renewed is None:
            return 0.0
        return self._renewed + self.seconds - time.monotonic()

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
        if storage.is_s3(self.output):
            if self._etag and not self._lost:
                bucket, key = self._key()
                try:
                    storage.s3_client().delete_object(Bucket=bucket, Key=key, IfMatch=self._etag)
                except Exception:  # noqa: BLE001 - an unreleased lease only expires later
                    pass
        elif self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- S3 ---------------------------------------------------------------------------------------
    def _key(self) -> tuple[str, str]:
        return storage.split_s3(storage.join(self.output, LEASE_FILE))

    def _body(self) -> bytes:
        return json.dumps({**self.owner, "renewed_at": _now(), "seconds": self.seconds}).encode()

    def _put(self, **condition) -> str:
        bucket, key = self._key()
        sent = time.monotonic()
        etag = storage.s3_client().put_object(Bucket=bucket, Key=key, Body=self._body(),
                                              ContentType="application/json", **condition)["ETag"]
        self._renewed = sent
        return etag

    def _acquire_s3(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self._etag = self._put(IfNoneMatch="*")
            return
        except ClientError as exc:
            if not _is_conflict(exc):
                raise CracknetError(f"Cannot take the lease on {self.output}: {storage.reason(exc)}") from None
        holder, etag, age = self._read()  # None when released meanwhile: try once more below
        if self._is_mine(holder):  # our own first PUT succeeded, but its response was lost and it was retried
            self._etag, self._renewed = etag, time.monotonic() - age - 2.0
            return
        if holder is not None:
            length = _length(holder, self.seconds)
            if age < length:
                raise OutputBusy(_busy_message(self.output, holder, length - age))
        try:
            self._etag = self._put(IfMatch=etag) if etag else self._put(IfNoneMatch="*")
        except ClientError as exc:
            if _is_conflict(exc):
                raise OutputBusy(f"Another run took the lease on {self.output} at the same moment; "
                                 "only one run may write there at a time.") from None
            raise CracknetError(f"Cannot take the lease on {self.output}: {storage.reason(exc)}") from None

    def _renew(self) -> None:
        from botocore.exceptions import ClientError

        with self._lock:
            if self._lost or self._etag is None:
                return
            try:
                self._etag = self._put(IfMatch=self._etag)
            except ClientError as exc:
                if _is_conflict(exc) or exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    try:
                        holder, etag, age = self._read()
                    except Exception:  # noqa: BLE001 - unreadable now: not proven ours, so presumed lost
                        holder = etag = None
                    if self._is_mine(holder):  # a retried renewal whose first attempt went through
                        self._etag, self._renewed = etag, time.monotonic() - age - 2.0
                        return
                    self._lost = (f"This run's lease on {self.output} was taken over by another run (it was not "
                                  f"renewed within {self.seconds:.0f} s); its results are not committed.")
            except Exception:  # noqa: BLE001 - a missed renewal is retried; check() fences on the last success
                pass

    def _read(self) -> tuple[dict | None, str | None, float]:
        """The lease as stored: (holder, ETag, age in seconds by the store's clock); (None, None, 0) when there is
        none. An unreadable holder (empty, not JSON) is ``{}``: it names nobody, and it ages like any other."""
        from botocore.exceptions import ClientError

        bucket, key = self._key()
        try:
            current = storage.s3_client().get_object(Bucket=bucket, Key=key)
            body = current["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None, None, 0.0
            raise CracknetError(f"Cannot read the lease on {self.output}: {storage.reason(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - the network: we cannot tell, so we do not take it
            raise CracknetError(f"Cannot read the lease on {self.output}: {storage.reason(exc)}") from None
        try:
            holder = json.loads(body)
            holder = holder if isinstance(holder, dict) else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            holder = {}
        return holder, current["ETag"], _store_age(current)

    def _is_mine(self, holder: dict | None) -> bool:
        return bool(holder) and all(holder.get(k) == self.owner[k] for k in ("run_id", "host", "pid", "acquired_at"))

    def _renew_forever(self) -> None:
        while not self._stop.wait(self.seconds / 4):
            self._renew()

    # -- local ------------------------------------------------------------------------------------
    def _acquire_local(self) -> None:
        path = os.path.join(os.path.abspath(self.output), LOCAL_LEASE_FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                holder = json.loads(handle.read() or "{}")
            except json.JSONDecodeError:
                holder = {}
            handle.close()
            raise OutputBusy(_busy_message(self.output, holder)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({**self.owner, "renewed_at": _now()}))
        handle.flush()
        self._file = handle


def _is_conflict(exc) -> bool:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status in (409, 412) or error.get("Code") in ("PreconditionFailed", "ConditionalRequestConflict")


def _length(holder: dict, default: float) -> float:
    try:
        return checked("seconds", holder["seconds"], LEASE_SECONDS)
    except (KeyError, TypeError, CracknetError):
        return default  # an unreadable or nonsensical lease (NaN, 0, a year) lives as long as ours would


def _store_age(response: dict) -> float:
    """Seconds since the object was last written, by the store's own clock (its Date header and LastModified,
    both to the second): one second is taken off, so a lease is never judged older than it can be."""
    from email.utils import parsedate_to_datetime

    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date", "")
    try:  # the first of "<day>, <date>[, <day>, <date>]": a proxy in between may add a Date of its own
        now = parsedate_to_datetime(",".join(date.split(",")[:2]))
    except (TypeError, ValueError):
        now = datetime.now(timezone.utc)  # no usable Date: this machine's clock, the only one left
    return max(0.0, (_utc(now) - _utc(response["LastModified"])).total_seconds() - 1.0)


def _utc(moment: datetime) -> datetime:
    """HTTP dates are UTC, also when they say "-0000" (which Python reads as a time without a zone)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _busy_message(output: str, holder: dict, left: float | None = None) -> str:
    """Who holds the output; on S3 (``left`` known) also when the lease expires if its holder died."""
    if not holder and left is not None:
        return (f"Another run holds {output}, but its lease file {LEASE_FILE} cannot be read (empty or not JSON); "
                f"it is treated as expired {left:.0f} s from now, unless that run renews it.")
    job = holder.get("job", "scoring")
    who = f"run {holder.get('run_id', '?')} on {holder.get('host', '?')} (pid {holder.get('pid', '?')})"
    since = f", started {_stamp(float(holder['acquired_at']))}" if holder.get("acquired_at") else ""
    expiry = f"; if it died, its lease expires in {left:.0f} s" if left is not None else ""
    return f"Another {job} run is writing to {output}: {who}{since}. Wait for it to finish{expiry}."
