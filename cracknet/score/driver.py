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
lives in ``cracknet.table.results``; the inputs in ``cracknet.score.inputs``; the Ray Data stages in
``cracknet.score.pipeline``.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from datetime import datetime, timezone

from cracknet import storage
from cracknet.errors import CracknetError, kind_of, root_cause
from cracknet.predict.scorer import CALL_TILES, tiling_of
from cracknet.progress import Progress
from cracknet.score import alerts, inputs, monitor, planning
from cracknet.score.config import ScoreConfig
from cracknet.score.pipeline import CrackPredictor, Geometry, read_and_tile, read_encoded, read_plan, write_parts
from cracknet.storage.lease import Lease
from cracknet.table import results, runs, sites

ALERT_WEBHOOK_ENV = "CRACKNET_ALERT_WEBHOOK"  # the webhook when --alert-webhook is not given (from a Secret)


def run_scoring(cfg: ScoreConfig, log=print) -> dict:
    """Score every new image of ``cfg.input``; commit the results in one Delta commit; judge the night (see
    ``cracknet.score.monitor``); return the run summary."""
    started = time.monotonic()
    cfg = dataclasses.replace(cfg, alert_webhook=cfg.alert_webhook or os.environ.get(ALERT_WEBHOOK_ENV) or None)
    if cfg.alert_webhook:
        alerts.check_webhook_url(cfg.alert_webhook)  # also one from the environment, before anything is done
    # Ray's workers do not share the driver's working directory: local paths become absolute.
    cfg = dataclasses.replace(cfg, model=storage.canonical(cfg.model), input=storage.canonical(cfg.input),
                              output=storage.canonical(cfg.output),
                              input_prefix=storage.canonical(cfg.input_prefix) if cfg.input_prefix else None)
    cfg = dataclasses.replace(cfg, masks=storage.canonical(cfg.masks) if cfg.masks else None)
    storage.require_bucket(cfg.output)
    results.refuse_old_layout(cfg.output)
    radius = sites.parse_structure_from(cfg.structure_from)
    sites.check_radius(cfg.output, radius)
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
            if radius is not None:  # also the photos of a run that died before placing them
                summary["sites"] = place_sites(cfg.output, radius, run_id, lease)
            record, summary["alerts"], summary["drift"] = watch(cfg, card, run_id, scored=bool(planned["files"]))
            runs.record(cfg.output, [runs.row(run_id, "scoring", provenance, summary, datetime.now(timezone.utc),
                                              summary.get("version"), record, summary["alerts"])])
        finally:
            _discard(staging)
    if summary["alerts"] and cfg.alert_webhook:
        summary["alert_delivery"] = alerts.post_alerts(cfg.alert_webhook, summary["alerts"], run_id, cfg.output)
    summary["seconds"] = round(time.monotonic() - started, 2)
    summary["images_per_second"] = round(summary["scored"] / summary["seconds"], 2) if summary["seconds"] else 0.0
    return summary


def place_sites(output: str, radius_m: float, run_id: str, lease: Lease) -> dict:
    """Give the table's photos with a position and no site theirs (``cracknet.table.sites``). Like monitoring,
    this never fails a run whose results are committed: a failure is reported, and the next run places what this
    one could not."""
    from cracknet.table.query import run_query

    try:
        photos = run_query(output, sites.unplaced_sql()).to_pylist()
        lease.check()
        return sites.place_new(output, radius_m, run_id,
                               [(p["image_uri"], p["latitude"], p["longitude"]) for p in photos])
    except Exception as exc:  # noqa: BLE001 - see the docstring
        return {"placed": 0, "new_sites": 0, "error": root_cause(exc)}


def resolve_model(cfg: ScoreConfig) -> dict:
    """The model's card, a registered version (models:/...) resolved once, here: the workers load the folder it
    named at planning, by its id, so a promotion during the run never mixes two models in one run."""
    from cracknet.model.card import read_model

    return read_model(cfg.model, cfg.mlflow)


def watch(cfg: ScoreConfig, card: dict, run_id: str, scored: bool) -> tuple[dict | None, list[dict], dict]:
    """Tonight's monitoring record, the rules that fired and the drift figures (see ``cracknet.score.monitor``).
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
        fired, drift = monitor.judge(record, recent, before, rules, validation)
        return {**record, "drift": drift, "rules": dataclasses.asdict(rules)}, fired, drift
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
    from cracknet.model.card import has_decoder

    if not has_decoder(card):
        return None
    from cracknet.images.scale import camera_table

    gate = float(card["threshold"]) if cfg.mask_gate is None else cfg.mask_gate
    cameras = camera_table(storage.read_bytes(cfg.camera_table).decode("utf-8", "replace") if cfg.camera_table
                           else None)
    return Geometry(gate, float(card["mask"]["threshold"]), card["mask"].get("width_threshold"), cfg.mm_per_pixel,
                    cfg.width_classes, cfg.masks, root, tuple(sorted(cameras.items())))


def provenance_of(cfg: ScoreConfig, card: dict, now: datetime, root: str = "") -> dict:
    """What a run's results depend on: its commit metadata, its Parquet files' metadata and its runs row."""
    from cracknet.version import __version__

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

    from cracknet.storage.cluster import ensure_ray

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

    from cracknet.model.card import preprocessing_of
    from cracknet.storage.cluster import ensure_ray

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
