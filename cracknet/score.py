"""Nightly bulk scoring: stream images from storage through the model into the results table.

    cracknet score --model runs/demo --input s3://survey/2026-11-24/ --output s3://survey/results
    ray job submit --working-dir . -- python jobs/score.py --model ... --input ... --output ...

Pipeline (Ray Data, streaming: memory is bounded by the pipeline's depth):

    plan: tonight's listing anti-joined with what this model committed   (one Ray task, DuckDB)
    -> read the plan files                                  (CPU tasks: read_plan)
    -> read bytes, decode, tile; packs of about one model call   (CPU tasks: read_and_tile)
    -> model on an actor pool, max over tiles per image     (CrackPredictor, one GPU each when there are GPUs)
    -> write Parquet files of the results table             (CPU tasks: write_parts)
    -> commit: one Delta commit naming every file            (driver)

Readers only see committed files, so a run that dies part-way leaves the table as
it was; ``cracknet compact`` vacuums what it wrote. Bad images become rows with
``error`` set and no probability; they never stop the job. The format itself
lives in ``cracknet.results``; the inputs in ``cracknet.inputs``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import posixpath
import re
import time
import uuid
from datetime import datetime, timezone

import numpy as np

from cracknet import inputs, monitor, planning, results, runs, storage
from cracknet.config import ScoreConfig
from cracknet.errors import CracknetError, kind_of, root_cause
from cracknet.lease import Lease
from cracknet.progress import Progress
from cracknet.scorer import CALL_TILES, tiling_of

ALERT_WEBHOOK_ENV = "CRACKNET_ALERT_WEBHOOK"  # the webhook when --alert-webhook is not given (from a Secret)


# ---------------------------------------------------------------------------
# Per-batch functions and the predictor (module level: Ray ships them to workers)


def read_plan(batch):
    """Plan file URIs (a pyarrow batch) -> the (image_uri, version) rows they hold, as a table; read through
    cracknet's storage, so an unavailable store gets the same retries and the same verdict as the images."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables(pq.read_table(io.BytesIO(storage.read_versioned(uri)[0]))
                            for uri in batch.column("plan").to_pylist())


def read_and_tile(batch: dict, spec, tiling, root: str, tiles_per_pack: int):
    """image_uri, version (, mm_per_pixel) -> packs of images with their tiles; a bad image is an image with
    ``error`` set, never an exception (see ``scorer.read_image``).

    A generator of one-row batches: each row is a *pack*, the images read since the last pack once they hold
    ``tiles_per_pack`` tiles (or the end of the batch). The model actors take one pack per call, so a model
    call's input is about ``tiles_per_pack`` tiles whatever the photo sizes, and each photo is decoded once.
    """
    from cracknet.scorer import read_image

    pending, tiles = [], 0
    for uri, listed_version, scale, refused in zip(batch["image_uri"], batch["version"], *_listed(batch)):
        found = unlisted(uri, listed_version, refused) or read_image(uri, spec, tiling, root=root,
                                                                     version=listed_version or "")
        pending.append((found, scale))
        tiles += 0 if found.tiles is None else len(found.tiles)
        if tiles >= tiles_per_pack:
            yield pack(*zip(*pending), size=spec.image_size)
            pending, tiles = [], 0
    if pending:
        yield pack(*zip(*pending), size=spec.image_size)


def _listed(batch: dict) -> tuple[list, list]:
    """Each planned image's scale from the manifest (None: the run's --mm-per-pixel), and why its manifest row
    cannot be scored (None: it can; see ``inputs.scale_of``)."""
    n = len(batch["image_uri"])
    scales, refused = batch.get("mm_per_pixel"), batch.get("listing_error")
    scales = [None] * n if scales is None else [None if s is None or s != s else float(s) for s in scales]
    return scales, [None] * n if refused is None else [r or None for r in refused]


def unlisted(uri: str, version: str | None, refused: str | None):
    """An error row, unread, for an image whose listing row is bad (``listing``: tried again when listed again);
    None for a good row."""
    from cracknet.scorer import Found

    return Found(uri, version or "", error=refused, error_kind="listing") if refused else None


def read_encoded(batch: dict, root: str, images_per_pack: int, max_bytes: int, bytes_per_pack: int = 64 << 20):
    """image_uri, version -> packs of undecoded images, for model actors that decode on their GPU (see
    ``scorer.tiles_on_device``): the same reads and error policy as ``read_and_tile``, no decoding here."""
    from cracknet.scorer import fetch

    pending, size = [], 0
    for uri, listed_version, scale, refused in zip(batch["image_uri"], batch["version"], *_listed(batch)):
        found = unlisted(uri, listed_version, refused)
        found, data = (found, None) if found else fetch(uri, root, listed_version or "", max_bytes)
        pending.append((found, data or b"", scale))
        size += len(data or b"")
        if len(pending) >= images_per_pack or size >= bytes_per_pack:
            yield encoded_pack(pending)
            pending, size = [], 0
    if pending:
        yield encoded_pack(pending)


def encoded_pack(pending: list) -> dict:
    """(Found, bytes, scale) triples -> one row: the bytes end to end with their offsets, text as JSON."""
    lengths = np.asarray([len(data) for _, data, _ in pending], dtype=np.int64)
    text = {"image_uri": [f.uri for f, _, _ in pending], "version": [f.version for f, _, _ in pending],
            "error": [f.error for f, _, _ in pending], "error_kind": [f.error_kind for f, _, _ in pending],
            "mm_per_pixel": [scale for _, _, scale in pending]}
    return {
        "data": _ragged([np.frombuffer(b"".join(data for _, data, _ in pending) or b"", dtype=np.uint8)]),
        "lengths": _ragged([lengths]),
        "text": np.asarray([json.dumps(text)], dtype=object),
    }


def pack(found: list, scales: list | None = None, size: int = 0) -> dict:
    """Images read for scoring (and their scales from the manifest, None where it gives none) -> one row: every
    tile in one array, per-image numbers as arrays, text as JSON."""
    empty_tiles, empty_boxes = np.zeros((0, size, size, 3), dtype=np.uint8), np.zeros((0, 4), dtype=np.int32)
    text = {"image_uri": [f.uri for f in found], "version": [f.version for f in found],
            "error": [f.error for f in found], "error_kind": [f.error_kind for f in found],
            "mm_per_pixel": list(scales) if scales is not None else [None] * len(found)}
    return {
        "tiles": _ragged([np.concatenate([empty_tiles] + [f.tiles for f in found if f.tiles is not None])]),
        "boxes": _ragged([np.concatenate([empty_boxes] + [f.boxes for f in found if f.boxes is not None])]),
        "counts": _ragged([np.asarray([0 if f.tiles is None else len(f.tiles) for f in found], dtype=np.int32)]),
        "width": _ragged([np.asarray([f.width for f in found], dtype=np.int32)]),
        "height": _ragged([np.asarray([f.height for f in found], dtype=np.int32)]),
        "text": np.asarray([json.dumps(text)], dtype=object),
    }


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    holder = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        holder[i] = a
    return holder


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How a run measures cracks, for models with a mask decoder: the tiles the decoder runs on (crack probability
    at or above ``gate``), the mask threshold and the cut widths are read from, the scale and width classes, and
    where masks are written."""
    gate: float
    threshold: float
    width_threshold: float | None  # the cut widths are read from (the model card's), or None: the mask's
    mm_per_pixel: float | None
    width_classes: str
    masks: str | None  # a folder for one PNG per image with cracks, or None
    root: str  # the input location, which mask names are relative to


def image_geometry(tile_maps: dict, boxes: np.ndarray, width: int, height: int, uri: str, version: str,
                   g: Geometry) -> tuple[str, str, str]:
    """One scored image's cracks (a JSON list of ``geometry.measure``'s cracks), their worst severity and its
    mask's URI ("" where none was written)."""
    from cracknet.geometry import parse_width_classes, worst
    from cracknet.masks import photo_cracks
    from cracknet.transforms import mask_png

    classes = parse_width_classes(g.width_classes)
    mask, cracks = photo_cracks(tile_maps, boxes, width, height, g.threshold, g.width_threshold, g.mm_per_pixel,
                                classes)
    if mask is None or not mask.any():
        return "[]", "", ""
    mask_uri = ""
    if g.masks and cracks:
        mask_uri = storage.join(g.masks, mask_name(uri, version, g.root))
        storage.write_bytes(mask_uri, mask_png(mask))
    return json.dumps(cracks), worst([c["severity"] for c in cracks], classes) or "", mask_uri


def mask_name(uri: str, version: str, root: str) -> str:
    """A mask's name: the image's path below the input made safe (``storage.name_below``: it stays inside the masks'
    location), then a hash of the image's full URI and version, as PNG. No two images share a mask (``x.jpg`` and
    ``x.JPG``, ``a//b.jpg`` and ``a/b.jpg``), and a new version of a photo gets a mask of its own."""
    from cracknet.data import content_hash

    stem = posixpath.splitext(storage.name_below(uri, root))[0] or "outside-input"
    key = "\n".join((uri, version)).encode()
    return f"{stem}.{content_hash(key)[:MASK_HASH]}.png"


MASK_HASH = 12
MASK_FILE = re.compile(r".*\.[0-9a-f]{%d}\.png" % MASK_HASH)  # what mask_name makes: compaction deletes only these


class CrackPredictor:
    """A Ray Data actor around the one scorer: loads the model once, and only the model the driver named.

    Takes packs (see ``read_and_tile``, or ``read_encoded`` with ``decode_on_device``: JPEGs are then decoded
    and tiled on the actor's GPU in batches, anything else on its CPU), returns one row per image: its
    probability (the highest of its tiles), and each tile's box and probability; with ``geometry`` (a model
    with a mask decoder) also its cracks (``image_geometry``)."""

    def __init__(self, model_uri: str, model_id: str, batch_tiles: int, tiling, threads: int = 0, fp32: bool = False,
                 decode_on_device: bool = False, max_pixels: int = 0, max_bytes: int = 0, compile: bool = False,
                 geometry: Geometry | None = None):
        from cracknet.scorer import Scorer

        self.scorer = Scorer.load(model_uri, batch_tiles=batch_tiles, tile_size=tiling.size, overlap=tiling.overlap,
                                  fp32=fp32, model_id=model_id, threads=threads, compile=compile)
        if max_pixels or max_bytes:
            self.scorer.spec = dataclasses.replace(self.scorer.spec, max_pixels=max_pixels or self.scorer.spec.max_pixels,
                                                   max_bytes=max_bytes or self.scorer.spec.max_bytes)
        self.decode_on_device = decode_on_device
        self.geometry = geometry if geometry is not None and self.scorer.draws_masks else None

    def __call__(self, batch: dict) -> dict:
        from cracknet.monitor import image_statistics

        out = {k: [] for k in ("image_uri", "version", "error", "error_kind", "width", "height", "crack_probability",
                               "tiles_scored", "tile_probabilities", "boxes", "cracks", "severity", "mask_uri",
                               "mm_per_pixel", "brightness", "sharpness")}
        packs = self._decoded_packs(batch) if self.decode_on_device else self._tiled_packs(batch)
        for text, widths, heights, per_image, boxes in packs:
            if self.geometry is None:
                crack, tile_probs = self.scorer.score(per_image)
            else:
                crack, tile_probs, maps = self.scorer.score_masks(per_image, self.geometry.gate)
                scales = text.get("mm_per_pixel") or [None] * len(text["image_uri"])  # from the manifest, if any
                for i, uri in enumerate(text["image_uri"]):
                    scale = scales[i] or self.geometry.mm_per_pixel
                    found = ("", "", "") if per_image[i] is None else \
                        image_geometry(maps[i], boxes[i], int(widths[i]), int(heights[i]), uri, text["version"][i],
                                       dataclasses.replace(self.geometry, mm_per_pixel=scale))
                    for key, value in zip(("cracks", "severity", "mask_uri"), found):
                        out[key].append(value)
                    out["mm_per_pixel"].append(np.nan if scale is None else scale)
            for key in ("image_uri", "version", "error", "error_kind"):
                out[key] += text[key]
            out["width"] += list(widths)
            out["height"] += list(heights)
            out["crack_probability"] += list(crack)
            out["tiles_scored"] += [len(p) for p in tile_probs]
            out["tile_probabilities"] += tile_probs
            out["boxes"] += boxes
            for tiles in per_image:
                stats = (np.nan, np.nan) if tiles is None else image_statistics(tiles)
                out["brightness"].append(stats[0])
                out["sharpness"].append(stats[1])
        geometry = {} if self.geometry is None else {
            **{key: np.asarray(out[key], dtype=object) for key in ("cracks", "severity", "mask_uri")},
            "mm_per_pixel": np.asarray(out["mm_per_pixel"], dtype=np.float32)}
        return {
            **geometry,
            "image_uri": np.asarray(out["image_uri"], dtype=object),
            "version": np.asarray(out["version"], dtype=object),
            "error": np.asarray(out["error"], dtype=object),  # "" keeps it a string column in every block
            "error_kind": np.asarray(out["error_kind"], dtype=object),
            "width": np.asarray(out["width"], dtype=np.int32),
            "height": np.asarray(out["height"], dtype=np.int32),
            "crack_probability": np.asarray(out["crack_probability"], dtype=np.float32),
            "tiles_scored": np.asarray(out["tiles_scored"], dtype=np.int32),
            "tile_probabilities": _ragged(out["tile_probabilities"]),
            "boxes": _ragged(out["boxes"]),
            "brightness": np.asarray(out["brightness"], dtype=np.float32),
            "sharpness": np.asarray(out["sharpness"], dtype=np.float32),
        }

    @staticmethod
    def _tiled_packs(batch: dict):
        """Packs of ``read_and_tile``: (text, widths, heights, tiles per image, boxes per image)."""
        for tiles, boxes, counts, width, height, text in zip(batch["tiles"], batch["boxes"], batch["counts"],
                                                             batch["width"], batch["height"], batch["text"]):
            ends = np.cumsum(np.asarray(counts, dtype=np.int64))[:-1]
            per_image = [t if len(t) else None for t in np.split(np.asarray(tiles), ends)]
            yield (json.loads(text), np.asarray(width), np.asarray(height), per_image,
                   np.split(np.asarray(boxes).reshape(-1, 4), ends))

    def _decoded_packs(self, batch: dict):
        """Packs of ``read_encoded``, decoded here: JPEGs in one batch on the device, the rest on the CPU."""
        from cracknet.scorer import Found, decode_into, tiles_on_device

        spec, tiling = self.scorer.spec, self.scorer.tiling
        for data, lengths, text in zip(batch["data"], batch["lengths"], batch["text"]):
            text = json.loads(text)
            data, lengths = np.asarray(data, dtype=np.uint8), np.asarray(lengths, dtype=np.int64)
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            datas = [data[a:a + n].tobytes() for a, n in zip(starts, lengths)]
            readable = [i for i, error in enumerate(text["error"]) if not error]
            on_device = tiles_on_device([datas[i] for i in readable], spec, tiling, self.scorer.device)
            widths, heights = np.zeros(len(datas), np.int32), np.zeros(len(datas), np.int32)
            per_image, boxes = [None] * len(datas), [np.zeros((0, 4), np.int32)] * len(datas)
            for i, got in zip(readable, on_device):
                if got is None:  # not a plain JPEG, or the device refused it: the CPU path, its errors included
                    got = decode_into(Found(text["image_uri"][i]), datas[i], spec, tiling)
                    if got.error:
                        text["error"][i], text["error_kind"][i] = got.error, got.error_kind
                        continue
                    got = (got.width, got.height, got.tiles, got.boxes)
                widths[i], heights[i], per_image[i], boxes[i] = got
            yield text, widths, heights, per_image, boxes


def write_parts(batch: dict, output: str, run_id: str, run_date: str, model_id: str, threshold: float,
                scored_at: str, metadata: dict) -> dict:
    """Write one file of the results table (not yet committed); one row describing it, for the commit."""
    tiles = []
    for boxes, probs in zip(batch["boxes"], batch["tile_probabilities"]):
        boxes = np.asarray(boxes).reshape(-1, 4)
        tiles.append([(*map(int, box), float(p)) for box, p in zip(boxes, np.asarray(probs))] if len(boxes) > 1 else [])
    table = results.part_table(batch, tiles, threshold, model_id, run_id, scored_at, metadata)
    part = results.write_part(table, output, run_id, run_date)
    return {key: np.asarray([value], dtype=object if isinstance(value, str) else np.int64)
            for key, value in part.items()}


# ---------------------------------------------------------------------------
# The driver


def run_scoring(cfg: ScoreConfig, log=print) -> dict:
    """Score every new image of ``cfg.input``; commit the results in one Delta commit; judge the night (see
    ``cracknet.monitor``); return the run summary."""
    started = time.monotonic()
    cfg = dataclasses.replace(cfg, alert_webhook=cfg.alert_webhook or os.environ.get(ALERT_WEBHOOK_ENV) or None)
    if cfg.alert_webhook:
        monitor.check_webhook_url(cfg.alert_webhook)  # also one from the environment, before anything is done
    # Ray's workers do not share the driver's working directory: local paths become absolute.
    cfg = dataclasses.replace(cfg, model=storage.canonical(cfg.model), input=storage.canonical(cfg.input),
                              output=storage.canonical(cfg.output),
                              input_prefix=storage.canonical(cfg.input_prefix) if cfg.input_prefix else None)
    cfg = dataclasses.replace(cfg, masks=storage.canonical(cfg.masks) if cfg.masks else None)
    storage.require_bucket(cfg.output)
    results.refuse_old_layout(cfg.output)
    root = inputs.input_root(cfg.input, cfg.input_prefix)  # where images may come from: a manifest's folder or bucket
    results.check_output(cfg.output, inputs=(cfg.input, root))
    check_masks_location(cfg, root)
    card = resolve_model(cfg)
    now = datetime.now(timezone.utc)
    run_id = now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]
    provenance = provenance_of(cfg, card, now, root)
    staging_root = storage.join(cfg.output, results.STAGING)
    staging = storage.join(staging_root, run_id)
    # One writer at a time: two runs must not both score (and commit) the same images.
    with Lease(cfg.output, owner={"run_id": run_id, "model_id": card["model_id"], "job": "scoring"},
               seconds=cfg.lease_seconds) as lease:
        storage.delete_tree(staging_root)  # plans of runs that died: nobody else writes here while we hold the lease
        _restore_runs(cfg.output)
        runs.check_model(cfg.output, card)
        try:
            planned = _plan(cfg, card, root, staging)
            if not planned["listed"]:
                raise CracknetError(f"No images (jpg, jpeg, png, tif) were found under {cfg.input}.")
            registered = card.get("registry")
            summary = {"run_id": run_id, "model_id": card["model_id"], "listed": planned["listed"],
                       "model_version": f"{registered['name']}/{registered['version']}" if registered else None,
                       "skipped": planned["listed"] - planned["todo"], "scored": 0, "errors": 0,
                       "errors_retried": planned["errors_retried"], "errors_given_up": planned["errors_given_up"],
                       "output": cfg.output, "history_files_read": planned["history_files_read"],
                       "history_files": planned["history_files"]}
            log(planning.plan_line(run_id, planned))
            if planned["files"]:
                summary.update(_score_and_commit(cfg, card, provenance, planned["files"], run_id, now, root, lease,
                                                 planned["todo"], log))
            else:  # nothing new: the run still records itself, so the model it names is the one in force
                lease.check()
            record, summary["alerts"], summary["drift"] = watch(cfg, card, run_id, scored=bool(planned["files"]))
            runs.record(cfg.output, [runs.row(run_id, "scoring", provenance, summary, datetime.now(timezone.utc),
                                              summary.get("version"), record, summary["alerts"])])
        finally:
            _discard(staging)
    if summary["alerts"] and cfg.alert_webhook:
        summary["alert_delivery"] = monitor.post_alerts(cfg.alert_webhook, summary["alerts"], run_id, cfg.output)
    summary["seconds"] = round(time.monotonic() - started, 2)
    summary["images_per_second"] = round(summary["scored"] / summary["seconds"], 2) if summary["seconds"] else 0.0
    return summary


def resolve_model(cfg: ScoreConfig) -> dict:
    """The model's card, a registered version (models:/...) resolved once, here: the workers load the folder it
    named at planning, by its id, so a promotion during the run never mixes two models in one run."""
    from cracknet import registry

    return registry.read_model(cfg.model, cfg.mlflow)


def watch(cfg: ScoreConfig, card: dict, run_id: str, scored: bool) -> tuple[dict | None, list[dict], dict]:
    """Tonight's monitoring record, the rules that fired and the drift figures (see ``cracknet.monitor``).
    Monitoring never fails a run whose results are committed: a failure of its own is an alert."""
    rules = monitor.Rules(window=cfg.drift_window, psi=cfg.drift_psi, rate_margin=cfg.crack_rate_margin,
                          max_error_rate=cfg.max_error_rate, min_growth=cfg.structure_growth,
                          length_growth=cfg.length_growth)
    if not scored:
        return None, [], {}
    try:
        record = monitor.run_record(cfg.output, run_id)
        recent = monitor.recent_records(runs.read(cfg.output), run_id, rules.window)
        before = monitor.survey_changes(cfg.output, run_id)
        validation = card.get("monitoring", {}).get("validation_probability_histogram")
        alerts, drift = monitor.judge(record, recent, before, rules, validation)
        return {**record, "drift": drift, "rules": dataclasses.asdict(rules)}, alerts, drift
    except Exception as exc:  # noqa: BLE001 - see the docstring
        return None, [{"rule": "monitoring", "message": f"Monitoring could not judge this night: "
                                                        f"{root_cause(exc)}", "value": 0.0}], {}


def check_masks_location(cfg: ScoreConfig, root: str) -> None:
    """Masks go outside the images (``root``: the input folder, or where a manifest's images may lie), and outside
    the table unless in its own ``_masks`` folder."""
    if not cfg.masks:
        return
    for images in (cfg.input, root):
        if storage.overlap(cfg.masks, images):
            raise CracknetError(f"--masks {cfg.masks} overlaps the images' location {images}: masks must lie "
                                "outside the images (with a manifest, --input-prefix narrows where they lie).")
    inside = storage.join(cfg.output, results.MASKS)
    if storage.overlap(cfg.masks, cfg.output) and cfg.masks.rstrip("/") != inside:
        raise CracknetError(f"--masks {cfg.masks} lies in the results table {cfg.output}; use {inside} or a "
                            "location outside it.")
    storage.require_bucket(cfg.masks)


def geometry_of(cfg: ScoreConfig, card: dict, root: str) -> Geometry | None:
    """How this run measures cracks; None for a model without a mask decoder."""
    from cracknet.card import has_decoder

    if not has_decoder(card):
        return None
    gate = float(card["threshold"]) if cfg.mask_gate is None else cfg.mask_gate
    return Geometry(gate, float(card["mask"]["threshold"]), card["mask"].get("width_threshold"), cfg.mm_per_pixel,
                    cfg.width_classes, cfg.masks, root)


def provenance_of(cfg: ScoreConfig, card: dict, now: datetime, root: str = "") -> dict:
    """What a run's results depend on: its commit metadata, its Parquet files' metadata and its runs row."""
    from cracknet import __version__

    geometry = geometry_of(cfg, card, root)
    return {"model_id": card["model_id"], "model": card["folder"], "weights_sha256": card["weights_sha256"],
            "registry": card.get("registry"),
            "threshold": card["threshold"], "preprocessing": card["preprocessing"],
            "tile_size": tiling_of(card, cfg.tile_size, cfg.tile_overlap).size, "tile_overlap": cfg.tile_overlap,
            "settings": {"fp32": cfg.fp32, "compile": cfg.compile, "max_pixels": cfg.max_pixels,
                         "max_bytes": cfg.max_bytes, "retry_errors": cfg.retry_errors, "masks": cfg.masks},
            "geometry": None if geometry is None else dataclasses.asdict(geometry),
            "input": cfg.input, "started_at": now.isoformat(), "cracknet_version": __version__}


def _restore_runs(output: str) -> None:
    """Runs rows lost between a results commit and its runs row (a run that died there) come back."""
    table = results.open_table(output)
    if table is not None:
        runs.restore_missing(output, table.history(20))


def _plan(cfg: ScoreConfig, card: dict, root: str, staging: str) -> dict:
    """Plan in a Ray task of its own, so the driver holds neither tonight's listing nor the history; its
    worker exits afterwards (max_calls=1) and hands its memory back."""
    import ray

    from cracknet.cluster import ensure_ray

    ensure_ray(cfg.ray_address, verbose=cfg.verbose)
    task = ray.remote(num_cpus=1, max_calls=1, max_retries=1)(planning.plan_run)
    try:
        return ray.get(task.remote(cfg.input, root, cfg.output, card["model_id"], staging, cfg.retry_errors))
    except ray.exceptions.RayError as exc:
        raise kind_of(exc)(root_cause(exc)) from None


def _discard(uri: str) -> None:
    """Delete a run's plan files, best effort: the next run deletes what is left (an error here must not hide
    the error that ended the run)."""
    try:
        storage.delete_tree(uri)
    except CracknetError:
        pass


def _score_and_commit(cfg: ScoreConfig, card: dict, provenance: dict, plan_files: list[str], run_id: str,
                      now: datetime, root: str, lease: Lease, todo: int, log) -> dict:
    started = time.monotonic()
    metadata = {**provenance, "run_id": run_id}
    try:
        parts, progress = [], Progress(todo, "images", log)
        try:
            for part in _score_pipeline(cfg, card, plan_files, run_id, now, root, metadata).iter_rows():
                parts.append(part)
                progress.update(int(part["rows"]))
        finally:
            progress.close()
        done = {"scored": sum(int(p["rows"]) for p in parts), "errors": sum(int(p["errors"]) for p in parts),
                "pipeline_seconds": round(time.monotonic() - started, 2)}
        done["version"] = results.commit(cfg.output, parts, run_id, {**metadata, "summary": done},
                                         before=lease.check)
    except Exception as exc:
        raise kind_of(exc)(f"Scoring stopped and nothing from run {run_id} was committed: "
                            f"{root_cause(exc)} Rerun to finish; what was committed before is kept.") from None
    return done


def _score_pipeline(cfg: ScoreConfig, card: dict, plan_files: list[str], run_id: str, now: datetime, root: str,
                    metadata: dict):
    """The Ray Data pipeline: plan files -> read and tile (CPU tasks) -> model (actor pool) -> table files."""
    import ray
    import ray.data

    from cracknet.card import preprocessing_of
    from cracknet.cluster import ensure_ray

    spec = dataclasses.replace(preprocessing_of(card), max_pixels=cfg.max_pixels, max_bytes=cfg.max_bytes)
    tiling = tiling_of(card, cfg.tile_size, cfg.tile_overlap)
    ensure_ray(cfg.ray_address, verbose=cfg.verbose)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    actors = cfg.num_actors or max(1, gpus)
    # An autoscaling cluster may have no GPU worker up yet: --use-gpu asks for them anyway.
    gpus = max(gpus, 1 if cfg.use_gpu else 0)
    threads = 0 if gpus else max(1, int(ray.cluster_resources().get("CPU", 1)) // actors)
    # Packs carry tiles to the actors; each actor cuts them into model calls of its own size (see call_tiles).
    pack_tiles = max(cfg.batch_size, CALL_TILES)
    # GPU actors decode JPEGs themselves, in batches on the GPU; otherwise CPU tasks decode and tile.
    if gpus:
        read = dict(fn=read_encoded, fn_kwargs={"root": root, "images_per_pack": pack_tiles,
                                                "max_bytes": cfg.max_bytes})
    else:
        read = dict(fn=read_and_tile, fn_kwargs={"spec": spec, "tiling": tiling, "root": root,
                                                 "tiles_per_pack": pack_tiles})
    return (
        ray.data.from_items([{"plan": uri} for uri in plan_files])  # one item per plan file, not per image
        .map_batches(read_plan, batch_size=1, batch_format="pyarrow")
        .map_batches(**read, batch_size=cfg.read_batch_size, batch_format="numpy")
        # One pack (about one model call of tiles, see read_and_tile) per call; out come rows of images.
        .map_batches(CrackPredictor, fn_constructor_kwargs={"model_uri": card["folder"], "model_id": card["model_id"],
                                                           "batch_tiles": cfg.batch_size, "tiling": tiling,
                                                           "threads": threads, "fp32": cfg.fp32,
                                                           "decode_on_device": bool(gpus),
                                                           "max_pixels": cfg.max_pixels, "max_bytes": cfg.max_bytes,
                                                           "compile": cfg.compile,
                                                           "geometry": geometry_of(cfg, card, root)},
                     compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=1 if gpus else 0,
                     num_cpus=0 if gpus else 1, batch_size=1, batch_format="numpy")
        .map_batches(write_parts, fn_kwargs={"output": cfg.output, "run_id": run_id, "run_date": now.date().isoformat(),
                                             "model_id": card["model_id"], "threshold": float(card["threshold"]),
                                             "scored_at": now.isoformat(), "metadata": metadata},
                     batch_size=cfg.rows_per_part, batch_format="numpy")
    )
