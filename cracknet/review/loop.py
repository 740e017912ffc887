"""``cracknet review select | export | import``: a review is a folder that travels through the loop.

    cracknet review select --results s3://survey/results --output s3://survey/reviews/2026-12-07 --budget 200
    cracknet review export --review s3://survey/reviews/2026-12-07            # label-studio/tasks.json + config.xml
    (the tasks are imported into Label Studio, reviewed, and exported as JSON)
    cracknet review import --review s3://survey/reviews/2026-12-07 --labels export.json --output s3://survey/labelled

The folder holds ``selection.parquet`` (what was picked, why, with what probability: ``review.sampling``),
``review.json`` (the design, the model in force, the results it came from), the tasks, and after import
``labels.parquet`` (one verdict per photo) and ``field.json`` (the model measured in the field). Import also
writes the verdicts as a labelled tree (``crack/``, ``no_crack/``) and the corrected masks as a mask tree
(``images/``, ``masks/``) under ``--output``, ready for ``cracknet train --base-model``, and keeps a record of the
review beside the runs table (``<results>/_reviews/``).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa

from cracknet import storage
from cracknet.config import REQUIRED, option
from cracknet.errors import CracknetError
from cracknet.measure.geometry import DEFAULT_WIDTH_CLASSES, parse_width_classes
from cracknet.numbers import SHARE, Range, check_fields
from cracknet.review import labelstudio
from cracknet.review.sampling import Design, field_estimate, select

SELECTION, REVIEW, TASKS, LABELS, FIELD = "selection.parquet", "review.json", "label-studio", "labels.parquet", \
    "field.json"
RECORDS = "_reviews"  # beside the runs table: one JSON record per imported review (the report reads them)


@dataclass(frozen=True)
class ReviewSelectConfig:
    """``cracknet review select``: what a person should look at tonight."""
    results: str = option(REQUIRED, "the scoring output: a folder or s3:// prefix")
    output: str = option(REQUIRED, "the review's folder (path or s3://): its selection, tasks and labels go there")
    budget: int = option(200, "photos to review", range=Range(1, 100_000))
    random_share: float = option(0.25, "the share of the budget drawn at random (the part that measures the "
                                       "model without bias)", range=SHARE)
    seed: int = option(0, "the draw's seed: the same seed, table and budget pick the same photos", range=Range(0, None))

    def __post_init__(self):
        check_fields(self)
        if self.random_share <= 0:
            raise CracknetError("--random-share must be more than 0: without a random part the field estimate "
                                "would be biased towards the model's mistakes.")


POPULATION = """
SELECT c.image_uri, c.version, c.structure, c.crack_probability, c.is_crack, c.model_id, c.run_id, c.width,
       c.height, c.mask_uri, c.severity, c.crack_length_mm AS length_mm, r.threshold, r.model AS model_folder,
       r.model_version,
       coalesce(regexp_matches(r.alerts, '"rule": "[a-z_]*drift"'), false) AS drifted
FROM current c JOIN runs r USING (run_id)
WHERE c.error IS NULL AND c.model_id = (SELECT model_id FROM in_force)
ORDER BY c.image_uri
"""


def select_for_review(cfg: ReviewSelectConfig) -> dict:
    """Pick the photos (``review.sampling``) from the current rows of the model in force; write the review."""
    import pyarrow.parquet as pq

    from cracknet.table.query import run_query

    rows = run_query(cfg.results, POPULATION).to_pylist()
    if not rows:
        raise CracknetError(f"{cfg.results} holds no photo scored without error by the model in force; score first.")
    ranks = {c.name: i + 1 for i, c in enumerate(parse_width_classes(DEFAULT_WIDTH_CLASSES))}
    for r in rows:
        r["severity_rank"] = ranks.get(r["severity"])
    threshold = float(rows[0]["threshold"])
    picks = select(rows, Design(cfg.budget, cfg.random_share, cfg.seed), threshold)
    table = pa.Table.from_pylist([{k: p.get(k) for k in SELECTION_COLUMNS} for p in picks], schema=SELECTION_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(storage.join(cfg.output, SELECTION), buffer.getvalue())
    review = {"review_id": _review_id(cfg.output), "results": storage.canonical(cfg.results),
              "model_id": rows[0]["model_id"], "model": rows[0]["model_folder"],
              "model_version": rows[0]["model_version"], "threshold": threshold,
              "design": {"budget": cfg.budget, "random_share": cfg.random_share, "seed": cfg.seed},
              "population": len(rows), "selected": len(picks),
              "selected_at": datetime.now(timezone.utc).isoformat()}
    storage.write_bytes(storage.join(cfg.output, REVIEW), json.dumps(review, indent=1).encode())
    reasons = {}
    for p in picks:
        reasons[p["reason"]] = reasons.get(p["reason"], 0) + 1
    return {**review, "reasons": reasons, "structures": len({p["structure"] for p in picks})}


SELECTION_SCHEMA = pa.schema([
    ("image_uri", pa.string()), ("version", pa.string()), ("structure", pa.string()), ("model_id", pa.string()),
    ("run_id", pa.string()), ("crack_probability", pa.float64()), ("is_crack", pa.bool_()), ("width", pa.int32()),
    ("height", pa.int32()), ("mask_uri", pa.string()), ("severity", pa.string()),
    ("reason", pa.string()),  # uncertain, severe, drift (reviewed for sure) or random
    ("inclusion_probability", pa.float64()), ("stratum", pa.string()), ("stratum_size", pa.int64()),
])
SELECTION_COLUMNS = SELECTION_SCHEMA.names


def _review_id(output: str) -> str:
    return storage.canonical(output).rstrip("/").rsplit("/", 1)[-1] or "review"


def read_review(review: str) -> tuple[dict, list[dict]]:
    """A review folder's record and selection; a sentence where it is not one."""
    import pyarrow.parquet as pq

    if not storage.exists(storage.join(review, SELECTION)):
        raise CracknetError(f"{review} holds no {SELECTION}: give the --output of `cracknet review select`.")
    record = json.loads(storage.read_bytes(storage.join(review, REVIEW)))
    picks = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(review, SELECTION)))).to_pylist()
    return record, picks


# ---------------------------------------------------------------------------------------------------
# Out to the tool


@dataclass(frozen=True)
class ReviewExportConfig:
    """``cracknet review export``: the selection as Label Studio tasks with the model's verdicts and masks."""
    review: str = option(REQUIRED, "the review's folder (the --output of `cracknet review select`)")
    format: str = option("label-studio", "label-studio: tasks.json and config.xml under label-studio/; coco: "
                                         "coco/annotations.json (CVAT and others import it)",
                         choices=("label-studio", "coco"))
    image_url: str = option("as-is", "how tasks name photos: as-is (their URIs: s3:// for a Label Studio with that "
                                     "bucket connected), presigned (an HTTPS link valid --link-hours), or "
                                     "local-files:ROOT (Label Studio's local file serving from ROOT)")
    link_hours: float = option(72.0, "how long a presigned link stays valid", range=Range(0.1, 168))

    def __post_init__(self):
        check_fields(self)
        if self.image_url not in ("as-is", "presigned") and not self.image_url.startswith("local-files:"):
            raise CracknetError(f"--image-url {self.image_url!r}: give as-is, presigned or local-files:ROOT.")


def export_tasks(cfg: ReviewExportConfig) -> dict:
    """Write ``<review>/label-studio/tasks.json`` and ``config.xml`` (or ``<review>/coco/annotations.json``);
    photos are referenced, never copied."""
    from cracknet.images.decoding import read_mask
    from cracknet.review import coco

    record, picks = read_review(cfg.review)
    items = [(item, read_mask(storage.read_bytes(item["mask_uri"])) if item["mask_uri"] else None) for item in picks]
    if cfg.format == "coco":
        drawn = coco.dataset([({**item, "image_uri": _url(item["image_uri"], cfg)}, mask) for item, mask in items],
                             f"cracknet review {record['review_id']} of model {record['model_id']}")
        folder = storage.join(cfg.review, "coco")
        storage.write_bytes(storage.join(folder, "annotations.json"), json.dumps(drawn).encode())
        return {"tasks": len(drawn["images"]), "folder": folder, "masks": len(drawn["annotations"]),
                "format": cfg.format}
    tasks = [labelstudio.task(item, _url(item["image_uri"], cfg), mask) for item, mask in items]
    folder = storage.join(cfg.review, TASKS)
    storage.write_bytes(storage.join(folder, "tasks.json"), json.dumps(tasks).encode())
    storage.write_bytes(storage.join(folder, "config.xml"), labelstudio.CONFIG.encode())
    return {"tasks": len(tasks), "folder": folder, "format": cfg.format,
            "masks": sum(1 for t in tasks if len(t["predictions"][0]["result"]) > 1)}


def _url(uri: str, cfg: ReviewExportConfig) -> str:
    if cfg.image_url == "as-is":
        return uri
    if cfg.image_url == "presigned":
        if not storage.is_s3(uri):
            raise CracknetError(f"--image-url presigned needs photos on S3; {uri} is not.")
        bucket, key = storage.split_s3(uri)
        return storage.s3_client().generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                          ExpiresIn=int(cfg.link_hours * 3600))
    from urllib.parse import quote

    root = storage.canonical(cfg.image_url[len("local-files:"):])
    if not storage.within(uri, root):
        raise CracknetError(f"{uri} lies outside the local-files root {root}.")
    return "/data/local-files/?d=" + quote(storage.relative(uri, root))


# ---------------------------------------------------------------------------------------------------
# Back from the tool


@dataclass(frozen=True)
class ReviewImportConfig:
    """``cracknet review import``: verdicts and corrected masks back, as labelled trees and a field estimate."""
    review: str = option(REQUIRED, "the review's folder (the --output of `cracknet review select`)")
    labels: str = option(REQUIRED, "Label Studio's JSON export of the review's project (path or s3://)")
    output: str = option(REQUIRED, "the labelled tree to write: crack/ and no_crack/ photos, and images/ with masks/ "
                                   "where a crack was drawn (ready for cracknet train --base-model)")
    mlflow: str | None = option(None, "the MLflow registry of the model in service, where scoring read it from "
                                      "models:/: its version gets the field estimate as a tag, and the version's "
                                      "training run the field metrics (default: MLFLOW_TRACKING_URI)")

    def __post_init__(self):
        if storage.overlap(self.output, self.review):
            raise CracknetError(f"--output {self.output} overlaps the review's folder {self.review}; give a folder "
                                "of its own.")


def import_labels(cfg: ReviewImportConfig) -> dict:
    """Read the tool's export, write the trees, the labels, the field estimate and the review's record."""
    import pyarrow.parquet as pq

    from cracknet.review import verdicts

    record, picks = read_review(cfg.review)
    found = verdicts.agreed(labelstudio.read_export(storage.read_bytes(cfg.labels)), picks)
    written = verdicts.write_trees(found["labels"], picks, cfg.output)
    table = verdicts.labels_table(found["labels"], picks)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(storage.join(cfg.review, LABELS), buffer.getvalue())
    truth = {uri: label["verdict"] for uri, label in found["labels"].items()}
    field = field_estimate([{**p, "truth": truth.get(p["image_uri"])} for p in picks])
    field["masks"] = verdicts.mask_agreement(found["labels"], picks)
    imported = {**record, "imported_at": datetime.now(timezone.utc).isoformat(), "labels": cfg.labels,
                "tree": cfg.output, "annotators": found["annotators"], "conflicts": found["conflicts"],
                "not_in_selection": found["unknown"], "field": field}
    imported["card"] = _record_in_card(record, field)
    imported["registry"] = _record_in_registry(record, field, cfg.mlflow)
    storage.write_bytes(storage.join(cfg.review, FIELD), json.dumps(imported, indent=1, default=str).encode())
    storage.write_bytes(storage.join(record["results"], RECORDS, f"{record['review_id']}.json"),
                        json.dumps(imported, indent=1, default=str).encode())
    return {**imported, "written": written}


def _record_in_card(record: dict, field: dict) -> str | None:
    """The field estimate as an evaluation row of the model's card (surface ``field: <review>``); None where the
    model's folder cannot be written (a registry's read-only copy): the review's own record still holds it."""
    from cracknet.model.card import record_evaluations

    m = field["metrics"]
    row = {"data": f"review {record['review_id']} (design-weighted)", "images": field["reviewed"],
           "population": field["population"], "threshold": record["threshold"],
           **{k: m[k] for k in ("accuracy", "precision", "recall")},
           "precision_interval_95": field["intervals"]["precision"],
           "recall_interval_95": field["intervals"]["recall"], "interval_unit": "photo, within strata",
           **({"masks": field["masks"]} if field.get("masks") else {}),
           "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        return record_evaluations(record["model"], {f"field: {record['review_id']}": row})
    except CracknetError:
        return None


def _record_in_registry(record: dict, field: dict, mlflow: str | None) -> str | None:
    """Where the model in service is a registered version and a registry is named: the field estimate as the
    version's tag ``cracknet.field.<review>`` and, where the version came from a tracked training run, as that
    run's ``field_*`` metrics. Returns what was recorded, or why not, in words; None where there is no registry.
    The review's files are written before this: a registry that fails is said, not fatal."""
    from cracknet.registry.mlflow_client import client, reason, tracking_uri

    uri = tracking_uri(mlflow)
    if not uri or not record.get("model_version"):
        return None
    name, version = record["model_version"].rsplit("/", 1)
    metrics = {k: v for k, v in field["metrics"].items() if v is not None}
    summary = {"review": record["review_id"], "reviewed": field["reviewed"], "population": field["population"],
               **metrics, "intervals_95": field["intervals"]}
    key = "cracknet.field." + "".join(c if c.isalnum() or c in "-_." else "_" for c in record["review_id"])[:200]
    try:
        registry = client(uri)
        registry.set_model_version_tag(name, version, key, json.dumps(summary)[:5000])
        run_id = registry.get_model_version(name, version).run_id
        if run_id:
            from mlflow.entities import Metric

            now = int(datetime.now(timezone.utc).timestamp() * 1000)
            registry.log_batch(run_id, metrics=[Metric(f"field_{k}", float(v), now, 0) for k, v in metrics.items()])
        return f"version {version} of {name} tagged {key}" + (f"; run {run_id} has the field metrics" if run_id else "")
    except Exception as exc:  # noqa: BLE001 - the registry's own failures; the review itself is written
        return f"not recorded in the registry: {reason(exc, uri)}"
