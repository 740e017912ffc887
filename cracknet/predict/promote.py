"""The promotion gate: a registry alias (the model in service, e.g. ``champion``) moves to a candidate only
when the candidate is no worse on the team's own labelled surfaces.

    cracknet promote --model models:/cracknet/8 --alias champion --data metu=../shared/data/metu-dev \\
        --data bridge-a=s3://labels/bridge-a
    cracknet promote --model runs/r9 --alias champion --force "hotfix for the bridge-a false alarms"

Both models score every surface the way the nightly job scores. For each surface
and each gate metric (recall, precision and F1, each model at its own threshold)
the candidate's difference from the alias holder gets a paired bootstrap 95%
interval over the surface's images (over whole photos or structures where the
tree groups them: tiles of one photo are not independent evidence); the candidate is *worse* on a surface when
an interval lies wholly below zero. The alias moves only when no surface is
worse; ``--force REASON`` moves it anyway and records why. Either way the
verdict is one line, and the candidate's version keeps it as a tag
(``cracknet.promotion.<alias>``), so the registry says why each model serves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Optional

import numpy as np

from cracknet.config import REQUIRED, option
from cracknet.errors import CracknetError
from cracknet.measure.intervals import paired_difference
from cracknet.measure.metrics import GATE_METRICS
from cracknet.model.card import read_model
from cracknet.numbers import Range, check_fields
from cracknet.predict.evaluate import parse_surface
from cracknet.registry import versions

DEFAULT_NAME = "cracknet"
TAG_PREFIX = "cracknet.promotion."
MAX_TAG = 4900  # characters of a version tag's value MLflow keeps


def compare(candidate, champion, uri: str) -> dict:
    """Candidate against champion (two ``Scorer``s) on the labelled tree at ``uri``, on the images both read."""
    from cracknet.predict.evaluate import groups_of, predict_tree

    a, b = predict_tree(candidate, uri), predict_tree(champion, uri)
    shared = sorted(set(a.uris) & set(b.uris))
    if not shared:
        raise CracknetError(f"Neither model could read any image under {uri}.")
    index_a, index_b = {u: i for i, u in enumerate(a.uris)}, {u: i for i, u in enumerate(b.uris)}
    pa, pb = a.probs[[index_a[u] for u in shared]], b.probs[[index_b[u] for u in shared]]
    labels = a.labels[[index_a[u] for u in shared]]
    grouping, groups = groups_of(a)
    groups = None if groups is None else [groups[index_a[u]] for u in shared]
    diff = paired_difference(pa, pb, labels, candidate.threshold, champion.threshold, groups=groups)
    worse = [k for k in GATE_METRICS if diff[k]["interval"][1] < 0]
    return {"data": uri, "images": len(shared), "cracks": int(np.sum(labels)), "metrics": diff, "worse": worse,
            "groups": None if groups is None else len(set(groups)), "grouping": grouping}


def surface_line(name: str, row: dict) -> str:
    parts = [f"{k} {m['champion']:.3f} -> {m['candidate']:.3f} [{m['interval'][0]:+.3f}, {m['interval'][1]:+.3f}]"
             for k, m in row["metrics"].items()]
    verdict = f"worse ({', '.join(row['worse'])})" if row["worse"] else "no worse"
    count = row.get("groups")
    groups = f", {count} group{'s' if count != 1 else ''} resampled whole" if count else ""
    return f"{name} ({row['images']} images, {row['cracks']} cracks{groups}): {'; '.join(parts)}: {verdict}."


def candidate_version(mlflow, model: str, name: str, card: dict) -> dict:
    """The registered version the candidate is: the one its URI names, else the one made of its model id, else a
    new version of ``name`` registered now."""
    if card.get("registry"):
        return card["registry"]
    known = versions.find_version(mlflow, name, card["model_id"])
    return versions.version_info(known) if known is not None else versions.register(mlflow, name, card)


def alias_holder(mlflow, name: str, alias: str) -> dict | None:
    try:
        return versions.version_info(mlflow.get_model_version_by_alias(name, alias), alias)
    except Exception:  # noqa: BLE001 - no model holds the alias (yet)
        return None


@dataclass(frozen=True)
class PromoteConfig:
    """``cracknet promote``: move a registry alias to a model only when it is no worse on the named surfaces."""
    model: str = option(REQUIRED, "the candidate: models:/NAME/VERSION, or a model folder (registered if it is not "
                                  "yet)")
    alias: str = option("champion", "the alias to move")
    data: tuple[str, ...] = option((), "a labelled surface to compare the candidate and the alias holder on; "
                                       "repeatable", metavar="[NAME=]URI")
    registered_model: Optional[str] = option(None, "the registered model (default: the one --model names, else "
                                                   "cracknet)")
    force: Optional[str] = option(None, "move the alias even where the gate refuses or no surface is named; the "
                                        "reason is recorded with the version", metavar="REASON")
    mlflow: Optional[str] = option(None, "the MLflow registry (default: MLFLOW_TRACKING_URI)")
    batch_size: int = option(0, "tiles per model call (default: 64, or 8 in float32 on a CPU)",
                             range=Range(0, 4096))

    def __post_init__(self):
        check_fields(self)
        versions.check_alias(self.alias)
        for text in self.data:
            parse_surface(text)


def promote(model: str, alias: str, surfaces: list[tuple[str, str]], name: str | None = None,
            force: str | None = None, mlflow_uri: str | None = None, batch_size: int = 0,
            log: Callable[[str], None] = print) -> dict:
    """Judge ``model`` against the holder of ``alias`` on ``surfaces`` ((name, URI) pairs) and move the alias if
    the gate passes (or ``force`` gives a reason). Returns the verdict: promoted, the versions, the surface rows."""
    from cracknet.model.card import read_card
    from cracknet.predict.scorer import Scorer

    versions.check_alias(alias)
    mlflow = versions.registry_client(mlflow_uri)
    if versions.is_registry_uri(model):
        name = name or versions.parse(model)[0]
    name = name or DEFAULT_NAME
    card = read_model(model, mlflow_uri)
    candidate = candidate_version(mlflow, model, name, card)
    holder = alias_holder(mlflow, name, alias)
    if holder is not None and holder["version"] == candidate["version"]:
        line = f"Version {candidate['version']} of {name} already holds @{alias}; nothing changed."
        log(line)
        return {"promoted": False, "unchanged": True, "line": line, "candidate": candidate, "holder": holder}
    if holder is not None and not surfaces and not force:
        raise CracknetError(f"Version {holder['version']} holds @{alias}: name the labelled surfaces to compare on "
                            "(--data NAME=URI, repeatable), or give --force REASON.")
    rows = {}
    if holder is not None and surfaces:
        champion_card = read_card(holder["artifact_uri"])
        versions.check_version(champion_card, holder)
        new, old = (Scorer.load(c["folder"], batch_tiles=batch_size, model_id=c["model_id"])
                    for c in (card, champion_card))
        for surface, uri in surfaces:
            rows[surface] = compare(new, old, uri)
            log(surface_line(surface, rows[surface]))
    worse = [s for s, r in rows.items() if r["worse"]]
    passed = not worse
    if passed or force:
        mlflow.set_registered_model_alias(name, alias, candidate["version"])
    line = verdict_line(name, alias, candidate, holder, rows, worse, force)  # the caller says it (or refuses)
    _record(mlflow, name, alias, candidate, holder, rows, passed, force)
    return {"promoted": passed or bool(force), "line": line, "candidate": candidate, "holder": holder,
            "surfaces": rows, "forced": bool(force) and not passed}


def verdict_line(name: str, alias: str, candidate: dict, holder: dict | None, rows: dict, worse: list[str],
                 force: str | None) -> str:
    moved = f"@{alias} now names version {candidate['version']} of {name} (model {candidate['model_id']})"
    if holder is None:
        return f"Promoted: no version held @{alias}; {moved}."
    was = f"version {holder['version']}"
    if not worse:
        compared = f"no worse than {was} on {len(rows)} surface{'s' if len(rows) != 1 else ''}" if rows else \
            f"forced over {was} without a comparison ({force})"
        return f"Promoted: {compared}; {moved}."
    if force:
        return f"Promoted by force ({force}) although worse than {was} on {', '.join(worse)}; {moved}."
    return (f"Not promoted: version {candidate['version']} is worse than {was} on {', '.join(worse)}; @{alias} "
            f"still names {was}.")


def _record(mlflow, name: str, alias: str, candidate: dict, holder: dict | None, rows: dict, passed: bool,
            force: str | None) -> None:
    """The verdict as a tag of the candidate's version: when, against which version, the differences, why forced."""
    record = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "promoted": passed or bool(force),
              "against_version": holder["version"] if holder else None, "forced": force if force and not passed else None,
              "surfaces": {s: {"images": r["images"], "worse": r["worse"],
                               **{k: [round(m["difference"], 4), [round(x, 4) for x in m["interval"]]]
                                  for k, m in r["metrics"].items()}} for s, r in rows.items()}}
    text = json.dumps(record, sort_keys=True)
    mlflow.set_model_version_tag(name, candidate["version"], TAG_PREFIX + alias,
                                 text if len(text) <= MAX_TAG else text[:MAX_TAG - 1] + "…")
