"""Locations: how a local path or an ``s3://bucket/key`` URI is spelt, joined, normalised and compared.

    storage.join("s3://survey/night-1", "a.jpg")       # never leaves its base
    storage.relative(uri, root), storage.name_below(uri, root)

Pure string and path work: nothing here touches a store.
"""

from __future__ import annotations

import os
import posixpath
import re

from cracknet.errors import CracknetError

S3_PREFIX = "s3://"


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_PREFIX)


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len(S3_PREFIX):].partition("/")
    return bucket, key


REGISTRY_PREFIX = "models:/"


def absolute(uri: str) -> str:
    """A local path made absolute (Ray workers do not share the driver's working directory); s3:// and
    registry URIs (models:/name@alias) as they are."""
    return uri if is_s3(uri) or uri.startswith(REGISTRY_PREFIX) else os.path.abspath(os.path.expanduser(uri))


def to_uri(path: str, like: str) -> str:
    """Turn a filesystem path back into a URI of the same kind as ``like``."""
    return S3_PREFIX + path.lstrip("/") if is_s3(like) else path


def join(uri: str, *parts: str) -> str:
    """``uri`` with ``parts`` below it. Never leaves ``uri``: a part's leading or doubled slashes are dropped, and a
    part with a ``.`` or ``..`` segment is refused (names derived from input keys go through ``name_below``)."""
    below = [segment for part in parts for segment in part.replace(os.sep, "/").split("/") if segment]
    if any(segment in (".", "..") for segment in below):
        raise CracknetError(f"Refusing the location {'/'.join(parts)!r} below {uri}: it has a '.' or '..' segment.")
    if is_s3(uri):
        return S3_PREFIX + posixpath.join(uri[len(S3_PREFIX):].rstrip("/"), *below)
    return os.path.join(uri, *below)


def check_location(uri: str) -> None:
    """Refuse, in a sentence, a location flag the stores would misread: an s3:// URI with an empty segment
    (``s3://bucket//prefix``), which S3 takes as a key starting with "/" and Arrow refuses."""
    if is_s3(uri) and "" in uri[len(S3_PREFIX):].rstrip("/").split("/"):
        raise CracknetError(f"{uri} has an empty path segment (//); write it as {canonical(uri)}.")


def canonical(uri: str) -> str:
    """One spelling of a location given as a flag: ``s3://bucket/prefix`` without empty segments or a trailing
    slash; a local path absolute and normalised."""
    if is_s3(uri):
        return S3_PREFIX + "/".join(segment for segment in uri[len(S3_PREFIX):].split("/") if segment)
    if not uri or uri.startswith(REGISTRY_PREFIX):
        return uri
    return os.path.normpath(absolute(uri))


NAME_SEGMENT_BYTES = 200  # a file name's limit on most filesystems is 255 bytes; room is left for the suffixes


def name_below(uri: str, root: str) -> str:
    """A relative name, safe to place under any location, for an input ``uri`` found below ``root``: its path below
    the root with empty and ``.`` segments dropped, ``..`` spelt ``%2E%2E``, control characters and backslashes
    replaced, and long segments cut. Different keys can share this name (``a//b``, ``a/b``; on a case-insensitive
    disk ``x.jpg``, ``x.JPG``), so a derived file name adds a hash of the full key (see ``results.mask_name``).
    A ``uri`` outside ``root`` gets no path at all ("")."""
    if not within(uri, root):
        return ""
    text = relative(uri, root)
    safe = []
    for segment in text.split("/"):
        if segment in ("", "."):
            continue
        segment = "%2E%2E" if segment == ".." else _UNSAFE.sub("_", segment)
        safe.append(segment.encode()[:NAME_SEGMENT_BYTES].decode(errors="ignore"))
    return "/".join(safe)


_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\]")


def within(uri: str, root: str) -> bool:
    """Whether ``uri`` lies under ``root``, judged on what a read of ``uri`` opens.

    On local disk the kernel resolves ``.``/``..`` and symlinks, so both paths are resolved first. On S3
    a key is taken literally (``a/../b`` is a key of its own, not ``b``), so a key or root with a ``.``
    or ``..`` segment is never inside anything.
    """
    if is_s3(uri) != is_s3(root):
        return False
    if is_s3(uri):
        bucket, key = split_s3(uri)
        root_bucket, root_key = split_s3(root)
        root_key = root_key.rstrip("/")
        if _dot_segments(key) or _dot_segments(root_key):
            return False
        return bucket == root_bucket and (not root_key or key == root_key or key.startswith(root_key + "/"))
    path = os.path.realpath(os.path.expanduser(uri))
    base = os.path.realpath(os.path.expanduser(root))
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def _dot_segments(key: str) -> bool:
    return any(segment in (".", "..") for segment in key.split("/"))


def overlap(a: str, b: str) -> bool:
    """Whether one location lies inside the other (or they are the same)."""
    return within(a, b) or within(b, a)


def relative(uri: str, root: str) -> str:
    """The part of ``uri`` below ``root`` (a path with ``/`` separators, never starting with one); refused for a
    ``uri`` outside ``root``."""
    if not within(uri, root):
        raise CracknetError(f"{uri} does not lie under {root}.")
    if is_s3(uri):
        return uri[len(root.rstrip("/")) + 1:].lstrip("/")
    return os.path.relpath(os.path.realpath(absolute(uri)), os.path.realpath(absolute(root))).replace(os.sep, "/")
