"""Objects in storage: reading, writing, listing and deleting them, resolved in one place.

A URI is either a local path or ``s3://bucket/key`` (spelt and joined by ``locations``). Every other module
passes URIs around through ``cracknet.storage``; only this one knows about pyarrow filesystems and boto3. An S3-compatible
endpoint (MinIO, Ceph, R2, moto ...) is chosen with the standard
``AWS_ENDPOINT_URL`` variable; credentials come from the standard AWS chain
(environment, config files, instance or pod roles) and are never logged.

    >>> fs, path = resolve("s3://bucket/data")      # (S3FileSystem, "bucket/data")
    >>> read_bytes("runs/demo/model/model.json")
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import time
import uuid
from urllib.parse import urlparse

import pyarrow.fs as pafs

from cracknet.errors import CracknetError, ReadRefused, StorageUnavailable
from cracknet.screen import first_line
from cracknet.storage.locations import S3_PREFIX, canonical, is_s3, split_s3, to_uri

BODY_READ_ATTEMPTS = 3


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 filesystem for AWS or for the endpoint named by AWS_ENDPOINT_URL (cached per process)."""
    return _cached_filesystem(_environment())


def _environment() -> tuple:
    keys = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_REGION",
            "AWS_DEFAULT_REGION", "AWS_MAX_ATTEMPTS")
    return tuple(os.environ.get(k) for k in keys)


def _max_attempts() -> int:
    """Attempts per S3 request: the AWS SDKs' own AWS_MAX_ATTEMPTS setting, else 6 (standard retry mode)."""
    value = os.environ.get("AWS_MAX_ATTEMPTS", "6")
    if not value.isdigit() or int(value) < 1:
        raise CracknetError(f"AWS_MAX_ATTEMPTS must be a whole number of at least 1, got {value!r}.")
    return int(value)


@functools.lru_cache(maxsize=4)
def _cached_filesystem(_environment: tuple) -> pafs.S3FileSystem:
    kwargs: dict = {
        "connect_timeout": 10,
        "request_timeout": 60,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=_max_attempts()),
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def s3_client():
    """A boto3 S3 client for AWS or for the endpoint named by AWS_ENDPOINT_URL (boto3 reads it itself).

    Clients are cached per process and per endpoint/credentials, since making one is slow.
    """
    return _cached_client(_environment())


@functools.lru_cache(maxsize=4)
def _cached_client(_environment: tuple):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(retries={"total_max_attempts": _max_attempts(), "mode": "standard"},
                                            connect_timeout=10, read_timeout=60))


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``uri`` and the path of ``uri`` inside it."""
    if not uri:
        raise CracknetError("An empty location was given; pass a local path or s3://bucket/prefix.")
    if is_s3(uri):
        path = uri[len(S3_PREFIX):].strip("/")
        if not path:
            raise CracknetError(f"{uri!r} names no bucket; use s3://bucket/prefix.")
        if "" in path.split("/"):
            raise CracknetError(f"{uri} has an empty path segment (//); write it as {canonical(uri)}.")
        return s3_filesystem(), path
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def reason(exc: BaseException) -> str:
    """A store's failure in one line, with what to check when it refused the credentials."""
    reason = first_line(exc)
    if any(code in reason for code in ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                                       "(403)", "Forbidden")):
        reason += " (the endpoint refused the credentials: check the AWS_* credentials and AWS_ENDPOINT_URL)"
    return reason


def require_bucket(uri: str) -> None:
    """Fail with one sentence, before any work, when the bucket an s3:// output names is missing or refused."""
    if not is_s3(uri):
        return
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _ = split_s3(uri)
    try:
        s3_client().head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise CracknetError(f"The bucket {bucket!r} of {uri} does not exist; create it or fix the URI.") from None
        raise CracknetError(f"Cannot use {uri}: {reason(exc)}") from None
    except BotoCoreError as exc:
        error = StorageUnavailable if _transient(exc) else CracknetError
        raise error(f"Cannot reach the object store for {uri}: {reason(exc)}") from None


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    try:
        # A random-access file knows its size, so Arrow fetches it in one request; its input stream's
        # read() fetches it in small ranges (a 94 MB model took 25 s instead of 0.2 s on a local endpoint).
        with fs.open_input_file(path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise CracknetError(f"{uri} does not exist.") from None
    except OSError as exc:
        raise _failure("read", uri, exc) from None


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object; readers never see a partly written one.

    On S3 one PUT (atomic, and safe to retry when a response is lost; a
    multipart upload's completion is not). On local disk the bytes go to a
    temporary file in the same folder first and are renamed into place.
    """
    if is_s3(uri):
        resolve(uri)  # the same checks of the URI as every other call
        bucket, key = split_s3(uri)
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        except Exception as exc:  # botocore's ClientError, connection errors after its retries ...
            if not _from_store(exc):
                raise  # a bug, not the store: let it show as itself
            raise _failure("write", uri, exc) from None
        return
    fs, path = resolve(uri)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise _failure("write", uri, exc) from None


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as exc:
        raise _failure("look up", uri, exc) from None


def list_files(uri: str) -> list[str]:
    """Every file below ``uri``, recursively, as URIs, sorted."""
    return sorted(to_uri(e.path, uri) for e in _file_infos(uri))


def _file_infos(uri: str) -> list[pafs.FileInfo]:
    """The FileInfo (path, size, mtime) of every file below ``uri``, from one recursive listing."""
    fs, path = resolve(uri)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise CracknetError(f"{uri} does not exist.")
        if info.type == pafs.FileType.File:
            raise CracknetError(f"{uri} is a file; expected a folder or prefix.")
        entries = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except OSError as exc:
        raise _failure("list", uri, exc) from None
    return [e for e in entries if e.type == pafs.FileType.File]


def delete_tree(uri: str) -> None:
    fs, path = resolve(uri)
    try:
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return
        if is_s3(uri):
            fs.delete_dir_contents(path, missing_dir_ok=True)
        else:
            shutil.rmtree(path)
    except OSError as exc:
        raise _failure("delete", uri, exc) from None


def delete_file(uri: str) -> bool:
    """Delete one file; whether it was there (nothing happens when it is already gone)."""
    fs, path = resolve(uri)
    try:
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return False
        fs.delete_file(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise _failure("delete", uri, exc) from None


def iter_versions(uri: str, page: int = 1000):
    """Every file below ``uri`` with a version tag (the ETag on S3, size and mtime on local disk), streamed
    as lists of at most ``page`` (URI, version) pairs: an S3 listing page by page, a local tree folder
    by folder, so a listing of any size is never held whole."""
    for listed in _listing(uri, page):
        yield [(u, version) for u, version, _ in listed]


def iter_modified(uri: str, page: int = 1000):
    """Every file below ``uri`` with when it was last written (UTC), streamed as lists of at most ``page``
    (URI, datetime) pairs; nothing when ``uri`` does not exist."""
    if not is_s3(uri) and not os.path.exists(os.path.expanduser(uri)):
        return
    for listed in _listing(uri, page):
        yield [(u, modified) for u, _, modified in listed]


def _listing(uri: str, page: int):
    """Pages of (URI, version, last written) of every file below ``uri``."""
    if not is_s3(uri):
        yield from _local_listing(uri, page)
        return
    bucket, prefix = split_s3(uri.rstrip("/") + "/")
    try:
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix,
                                                                      PaginationConfig={"PageSize": page})
        for listed in pages:
            yield [(f"{S3_PREFIX}{bucket}/{item['Key']}", item["ETag"].strip('"'), item["LastModified"])
                   for item in listed.get("Contents", []) if not item["Key"].endswith("/")]
    except CracknetError:
        raise
    except Exception as exc:  # botocore's ClientError, EndpointConnectionError, NoSuchBucket ...
        raise _failure("list", uri, exc) from None


def _local_listing(uri: str, page: int):
    from datetime import datetime, timezone

    root = os.path.abspath(os.path.expanduser(uri))
    if not os.path.exists(root):
        raise CracknetError(f"{uri} does not exist.")
    if not os.path.isdir(root):
        raise CracknetError(f"{uri} is a file; expected a folder or prefix.")
    batch = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            try:
                info = os.stat(path)
            except OSError:  # a dangling link, or removed since the folder was read
                continue
            if not os.path.isfile(path):
                continue
            batch.append((path, f"{info.st_size}-{info.st_mtime_ns}", datetime.fromtimestamp(info.st_mtime,
                                                                                               timezone.utc)))
            if len(batch) >= page:
                yield batch
                batch = []
    if batch:
        yield batch


def delta_options(uri: str) -> dict[str, str] | None:
    """Storage options for the ``deltalake`` package (its own Rust S3 client): the same endpoint, region and
    attempts per request as boto3 and pyarrow. Credentials it reads from the standard AWS chain itself."""
    if not is_s3(uri):
        return None
    options = {"max_retries": str(_max_attempts() - 1), "retry_timeout": "120s", "timeout": "60s",
               "connect_timeout": "10s"}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint if "://" in endpoint else f"https://{endpoint}"
        if options["AWS_ENDPOINT_URL"].startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["AWS_REGION"] = region
    return options


def _local_version(info: pafs.FileInfo) -> str:
    return f"{info.size}-{info.mtime_ns}"


def read_versioned(uri: str, max_bytes: int = 0) -> tuple[bytes, str]:
    """The bytes of one file and its version tag, read in one go. With ``max_bytes``, a larger file is refused
    from its size alone (its bytes are never fetched)."""
    if not is_s3(uri):
        fs, path = resolve(uri)
        try:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.Directory:
                raise CracknetError(f"{uri} is a folder, not a file.")
        except OSError as exc:
            raise _failure("read", uri, exc) from None
        if info.type == pafs.FileType.File:
            _check_size(uri, info.size, max_bytes)
        return read_bytes(uri), _local_version(info)
    bucket, key = split_s3(uri)
    last: Exception | None = None
    for attempt in range(BODY_READ_ATTEMPTS):
        try:
            response = s3_client().get_object(Bucket=bucket, Key=key)
            try:
                _check_size(uri, int(response.get("ContentLength", 0)), max_bytes)
            except CracknetError:
                response["Body"].close()  # the headers said enough: the body is never read
                raise
            # botocore retries a request, but not a connection that drops while the body streams.
            return response["Body"].read(), response["ETag"].strip('"')
        except CracknetError:
            raise
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404"):
                raise CracknetError(f"{uri} does not exist.") from None
            if not _from_store(exc):
                raise  # a bug, not the store: never retried, never reported as an unavailable store
            if not _transient(exc):
                raise _failure("read", uri, exc) from None
            last = exc
            if getattr(exc, "response", None):
                break  # an error response after botocore's own retries: retrying again only delays the verdict
            time.sleep(0.2 * 2 ** attempt)
    raise StorageUnavailable(f"Cannot read {uri}: the object store kept failing ({reason(last)}).")


def _check_size(uri: str, size: int, max_bytes: int) -> None:
    if max_bytes and size > max_bytes:
        raise CracknetError(f"the file is {size / 2**20:.1f} MiB, over the limit of {max_bytes / 2**20:.0f} MiB "
                            "(--max-bytes), so it was not read")


def _from_store(exc: BaseException) -> bool:
    """Whether an exception came from the object store or the way to it (an answer, or a network failure)."""
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(exc, (BotoCoreError, ClientError)) or _transient(exc)


def _failure(verb: str, uri: str, exc: BaseException) -> CracknetError:
    """The error for a filesystem call that failed: the store being unavailable, and an object it refuses (which
    may change), are told apart from the rest."""
    error = StorageUnavailable if _transient(exc) else ReadRefused if _refused(exc) else CracknetError
    return error(f"Cannot {verb} {uri}: {reason(exc)}")


# S3's answers for an object it will not hand over now: denied (keys, bucket or KMS policies), or archived.
_REFUSED_CODES = ("AccessDenied", "AllAccessDisabled", "InvalidObjectState", "InvalidAccessKeyId",
                  "SignatureDoesNotMatch", "ExpiredToken", "KMS.DisabledException", "KMS.AccessDeniedException",
                  "403")


def _refused(exc: BaseException) -> bool:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", "")) if isinstance(
        getattr(exc, "response", None), dict) else ""
    return (isinstance(exc, PermissionError) or code in _REFUSED_CODES or code.startswith("KMS.")
            or (isinstance(exc, OSError) and bool(re.search(r"ACCESS_DENIED|AccessDenied|HTTP status 403|"
                                                            r"InvalidObjectState", str(exc)))))


# How Arrow's S3 filesystem (an OSError with the AWS SDK's error name) reports throttling, 5xx and the network.
_ARROW_TRANSIENT = re.compile(r"AWS Error (SLOW_DOWN|THROTTLING|SERVICE_UNAVAILABLE|INTERNAL_FAILURE|REQUEST_TIMEOUT"
                              r"|NETWORK_CONNECTION|REQUEST_TIME_TOO_SKEWED)|HTTP status 5\d\d")


def out_of_reach(exc: BaseException) -> bool:
    """Whether a failure that no module turned into a sentence is the object store (or the way to it) failing."""
    return _transient(exc) or (_from_store(exc) and "Could not connect" in str(exc))


def _transient(exc: BaseException) -> bool:
    """Throttling, server errors, timeouts and dropped connections: worth retrying, not a fact about the data.

    Only errors of the network or of the store count; anything else (a bug, a bad argument) is not retried
    and is not reported as an unavailable store.
    """
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = response.get("Error", {}).get("Code", "")
        return status >= 500 or code in ("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                                         "InternalError", "ServiceUnavailable", "RequestTimeTooSkewed")
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError, IncompleteReadError, ReadTimeoutError, ResponseStreamingError
    from urllib3.exceptions import HTTPError as Urllib3Error

    network = (BotoConnectionError, HTTPClientError, IncompleteReadError, ReadTimeoutError, ResponseStreamingError,
               Urllib3Error, ConnectionError, TimeoutError)
    return isinstance(exc, network) or (isinstance(exc, OSError) and bool(_ARROW_TRANSIENT.search(str(exc)))) \
        or (type(exc).__module__.startswith("deltalake") and bool(_DELTA_TRANSIENT.search(str(exc))))


# How the deltalake package's own object-store client reports the network (after its retries).
_DELTA_TRANSIENT = re.compile(r"error sending request|Connection refused|connection closed|dns error|timed out|"
                              r"operation timed out|HTTP status server error|Service Unavailable|SlowDown")


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
