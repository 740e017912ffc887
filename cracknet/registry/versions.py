"""The model registry (MLflow): registered versions of cracknet models, aliases, and ``models:/`` URIs.

    cracknet score --model models:/cracknet@champion ...     # the version the alias names, resolved once
    cracknet evaluate --model models:/cracknet/7 --data ...  # any command that takes a model URI

The cracknet artifact stays the source of truth: a registered version points at
the artifact's folder (tag ``artifact_uri``, and the version's source where the
server accepts it) and carries its ``model_id``; resolving a version reads the
card there and refuses one whose id is no longer the version's (the folder was
overwritten). Registry URIs resolve against ``MLFLOW_TRACKING_URI`` (or a
command's ``--mlflow``).
"""

from __future__ import annotations

import re
from typing import Any

from cracknet import storage
from cracknet.errors import CracknetError, StorageUnavailable
from cracknet.registry.mlflow_client import client, reason, tracking_uri, unavailable
from cracknet.screen import redact

PREFIX = storage.REGISTRY_PREFIX
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


def is_registry_uri(uri: str | None) -> bool:
    return bool(uri) and uri.startswith(PREFIX)


def parse(uri: str) -> tuple[str, str | None, str | None]:
    """(name, version, alias) of ``models:/name/version`` or ``models:/name@alias``."""
    match = _URI.match(uri)
    if not match:
        raise CracknetError(f"{uri} is not a registry model URI; use models:/NAME/VERSION or models:/NAME@ALIAS.")
    if match["alias"] is not None:
        check_alias(match["alias"])
    return match["name"], match["version"], match["alias"]


def check_alias(alias: str) -> None:
    """Refuse an alias MLflow reserves or cannot store: ``latest`` (the newest version, not an alias), ``v`` and
    digits (version numbers), or anything but letters, digits, _ and - (up to 255)."""
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias) or not re.fullmatch(r"[\w-]{1,255}", alias):
        raise CracknetError(f"{alias!r} cannot be an alias: MLflow reserves 'latest' and v<number>, and an alias is "
                            "letters, digits, _ and - (e.g. champion).")


def registry_client(flag: str | None = None):
    uri = tracking_uri(flag)
    if uri is None:
        raise CracknetError("A models:/ URI needs the registry's address: set MLFLOW_TRACKING_URI or pass --mlflow.")
    return client(uri)


def version_info(mv, alias: str | None = None) -> dict[str, Any]:
    """What cracknet keeps of a registered version (in a run's record, a promotion's tags, the console)."""
    return {"name": mv.name, "version": str(mv.version), "alias": alias, "model_id": mv.tags.get("model_id"),
            "artifact_uri": mv.tags.get("artifact_uri") or mv.source}


def resolve(uri: str, flag: str | None = None) -> dict[str, Any]:
    """The registered version a ``models:/`` URI names now (see ``version_info``)."""
    name, version, alias = parse(uri)
    mlflow = registry_client(flag)
    try:
        mv = mlflow.get_model_version_by_alias(name, alias) if alias else mlflow.get_model_version(name, version)
    except Exception as exc:  # noqa: BLE001 - no such model, version or alias; an unreachable registry
        at = tracking_uri(flag)
        error = StorageUnavailable if unavailable(exc) else CracknetError
        raise error(f"Cannot resolve {uri} at {redact(at)}: {reason(exc, at)}") from None
    info = version_info(mv, alias)
    if not info["artifact_uri"] or info["artifact_uri"].startswith("runs:/"):
        raise CracknetError(f"{uri} (version {info['version']}) names no cracknet artifact (no artifact_uri tag).")
    return info


def check_version(card: dict, info: dict) -> None:
    """Refuse an artifact that is no longer the model its registered version was made of."""
    if info.get("model_id") and card["model_id"] != info["model_id"]:
        raise CracknetError(f"{info['artifact_uri']} now holds model {card['model_id']}, but version "
                            f"{info['version']} of {info['name']} was registered as {info['model_id']}: the folder "
                            "was overwritten; register the new model as a new version.")


def versions(mlflow, name: str) -> list:
    try:
        return list(mlflow.search_model_versions(f"name='{name}'"))
    except Exception:  # noqa: BLE001 - a name never registered has no versions
        return []


def find_version(mlflow, name: str, model_id: str):
    """The registered version of ``name`` made of ``model_id`` (the newest if several), or None."""
    found = [mv for mv in versions(mlflow, name) if mv.tags.get("model_id") == model_id]
    return max(found, key=lambda mv: int(mv.version)) if found else None


def register(mlflow, name: str, card: dict, run_id: str | None = None) -> dict[str, Any]:
    """Register the artifact of ``card`` as a version of ``name`` (once: the same model id is the same version)."""
    known = find_version(mlflow, name, card["model_id"])
    if known is not None:
        return version_info(known)
    try:
        mlflow.create_registered_model(name, description="cracknet crack models (the artifact folder of each "
                                                         "version is its source of truth)")
    except Exception:  # noqa: BLE001 - it exists already (RESOURCE_ALREADY_EXISTS); other failures show below
        pass
    tags = {"model_id": card["model_id"], "artifact_uri": card["folder"], "threshold": str(card["threshold"]),
            "masks": str("decoder" in card).lower()}
    try:
        mv = mlflow.create_model_version(name, card["folder"], run_id=run_id, tags=tags, await_creation_for=0)
    except Exception as exc:  # noqa: BLE001 - a tracking server takes local folders only inside a run's artifacts
        if run_id is None:
            raise CracknetError(f"Cannot register {card['folder']} as a version of {name}: {reason(exc)} Keep "
                                "models that a tracking server registers in object storage (s3://...).") from None
        mv = mlflow.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id, tags=tags,
                                         await_creation_for=0)
    return version_info(mv)


