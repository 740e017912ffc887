"""Nightly bulk scoring: stream images from storage through the model into committed Parquet.

    cracknet score --model runs/demo --input s3://survey/2026-11-24/ --output s3://survey/results
    ray job submit --working-dir . -- python jobs/score.py --model ... --input ... --output ...

Pipeline (Ray Data, streaming: memory is bounded by the pipeline's depth):

    list inputs (or read a manifest) -> drop images this model already scored
    -> read bytes, decode, cut large images into tiles      (CPU tasks: read_and_tile)
    -> model on an actor pool, max over tiles per image     (CrackPredictor, one GPU each when there are GPUs)
    -> write Parquet parts                                  (CPU tasks: write_parts)
    -> commit: one manifest naming every part, written last (driver)

Readers (``cracknet query``, the next night's run) only read parts named by a
committed manifest, so a run that dies part-way leaves nothing that looks like
a result; its orphaned parts are deleted by the next run. Bad images become
rows with ``error`` set and no probability; they never stop the job.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
import uuid
from datetime import datetime, timezone
import numpy as np
import pyarrow as pa

from cracknet import storage
from cracknet.config import ScoreConfig
from cracknet.data import is_image_name
from cracknet.errors import CracknetError, StorageUnavailable, root_cause
from cracknet.lease import Lease
from cracknet.transforms import ImageError, Preprocessing, decode_tiles

MANIFESTS = "_manifests"
IMAGES = "images"
TILES = "tiles"
MANIFEST_SUFFIXES = (".parquet", ".csv")

IMAGES_SCHEMA = pa.schema([
    ("image_uri", pa.string()),
    ("version", pa.string()),  # ETag on S3; size and mtime on local disk
    ("crack_probability", pa.float32()),  # null when error is set; the maximum over tiles when tiled
    ("is_crack", pa.bool_()),  # crack_probability >= the model's threshold
    ("tiles_scored", pa.int32()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("error", pa.string()),  # null when the image was scored
    ("model_id", pa.string()),
    ("run_id", pa.string()),
    ("scored_at", pa.timestamp("us", tz="UTC")),
])
TILES_SCHEMA = pa.schema([
    ("image_uri", pa.string()),
    ("tile_x", pa.int32()),
    ("tile_y", pa.int32()),
    ("tile_w", pa.int32()),
    ("tile_h", pa.int32()),
    ("crack_probability", pa.float32()),
    ("model_id", pa.string()),
    ("run_id", pa.string()),
])


# ---------------------------------------------------------------------------
# Inputs and what was already scored


def is_manifest(uri: str) -> bool:
    return uri.lower().endswith(MANIFEST_SUFFIXES) and storage.exists(uri)


def list_inputs(uri: str) -> list[tuple[str, str]]:
    """(image URI, version) for a folder/prefix, or for a Parquet/CSV manifest of URIs."""
    if is_manifest(uri):
        return _read_manifest_input(uri)
    return [(u, v) for u, v in storage.list_versions(uri) if is_image_name(u)]


def input_root(cfg: ScoreConfig) -> str:
    """Where input images may come from: --input-prefix, else the input folder, or for a manifest its
    bucket (S3) or its folder (local disk). Images named outside it become error rows, unread."""
    if cfg.input_prefix:
        return cfg.input_prefix
    if not is_manifest(cfg.input):
        return cfg.input
    if storage.is_s3(cfg.input):
        return storage.S3_PREFIX + storage.split_s3(cfg.input)[0]
    return os.path.dirname(os.path.abspath(cfg.input))


def _read_manifest_input(uri: str) -> list[tuple[str, str]]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    data = storage.read_bytes(uri)
    try:
        table = pq.read_table(io.BytesIO(data)) if uri.lower().endswith(".parquet") else \
            pacsv.read_csv(io.BytesIO(data))
    except Exception as exc:
        raise CracknetError(f"{uri} is not a readable manifest ({type(exc).__name__}).") from None
    column = next((c for c in ("image_uri", "uri", "path") if c in table.column_names), None)
    if column is None:
        raise CracknetError(f"The manifest {uri} has no image_uri column (columns: {', '.join(table.column_names)}).")
    uris = [str(u) for u in table.column(column).to_pylist() if u]
    versions = table.column("version").to_pylist() if "version" in table.column_names else [""] * len(uris)
    return [(u, str(v or "")) for u, v in zip(uris, versions)]


def committed_manifests(output: str) -> list[dict]:
    folder = storage.join(output, MANIFESTS)
    if not storage.exists(folder):
        return []
    manifests = []
    for uri in storage.list_files(folder):
        if uri.endswith(".json"):
            try:
                manifests.append(json.loads(storage.read_bytes(uri)))
            except json.JSONDecodeError:
                raise CracknetError(f"The run manifest {uri} is not valid JSON; the results are damaged.") from None
    return manifests


def already_scored(output: str, model_id: str, manifests: list[dict]) -> set[tuple[str, str]]:
    """(image URI, version) pairs this model has committed rows for."""
    import pyarrow.parquet as pq

    done: set[tuple[str, str]] = set()
    for manifest in manifests:
        if manifest["model_id"] != model_id:
            continue
        for part in manifest[IMAGES]:
            fs, path = storage.resolve(storage.join(output, part["path"]))
            table = pq.read_table(path, filesystem=fs, columns=["image_uri", "version"])
            done.update(zip(table.column("image_uri").to_pylist(), table.column("version").to_pylist()))
    return done


def remove_orphans(output: str, manifests: list[dict]) -> int:
    """Delete parts that no committed manifest names (left by runs that died); returns how many.

    Only call this while holding the output's lease: a part still being
    written by another live run would look exactly like an orphan.
    """
    import pyarrow.fs as pafs

    named = {p["path"] for m in manifests for kind in (IMAGES, TILES) for p in m[kind]}
    fs, base = storage.resolve(output)
    removed = 0
    for kind in (IMAGES, TILES):
        try:
            entries = fs.get_file_info(pafs.FileSelector(f"{base}/{kind}", recursive=True, allow_not_found=True))
        except OSError as exc:
            raise CracknetError(f"Cannot list {storage.join(output, kind)}: {exc}") from None
        for entry in entries:
            if entry.type == pafs.FileType.File and entry.path[len(base) + 1:] not in named:
                fs.delete_file(entry.path)
                removed += 1
    return removed


# ---------------------------------------------------------------------------
# Per-batch functions and the predictor (module level: Ray ships them to workers)


def read_and_tile(batch: dict, spec: Preprocessing, tile: int, overlap: float, root: str) -> dict:
    """image_uri, version -> decoded tiles per image, or an error; never raises for a bad image.

    Only images under ``root`` are read: a manifest cannot make the job read elsewhere.
    """
    size = spec.image_size
    out = {k: [] for k in ("image_uri", "version", "width", "height", "tiles", "boxes", "error")}
    for uri, listed_version in zip(batch["image_uri"], batch["version"]):
        width = height = 0
        tiles = np.zeros((0, size, size, 3), dtype=np.uint8)
        boxes = np.zeros((0, 4), dtype=np.int32)
        error, version = "", listed_version  # "" keeps the column a string column in every block
        try:
            if not storage.within(uri, root):
                raise CracknetError(f"{uri} lies outside the input location {root}, so it was not read "
                                    "(--input-prefix widens the location).")
            data, version = storage.read_versioned(uri)
            width, height, tiles, boxes = decode_tiles(data, spec, tile, overlap)
        except StorageUnavailable:
            raise  # not a fact about this image: the run stops rather than record a good image as an error
        except (ImageError, CracknetError) as exc:
            error = str(exc)
        except Exception as exc:  # anything else about one image must not stop the job
            error = f"unexpected {type(exc).__name__}: {exc}"
        out["image_uri"].append(uri)
        out["version"].append(listed_version or version)
        out["width"].append(width)
        out["height"].append(height)
        out["tiles"].append(tiles)
        out["boxes"].append(boxes)
        out["error"].append(error)
    return {
        "image_uri": np.asarray(out["image_uri"], dtype=object),
        "version": np.asarray(out["version"], dtype=object),
        "width": np.asarray(out["width"], dtype=np.int32),
        "height": np.asarray(out["height"], dtype=np.int32),
        "tiles": _ragged(out["tiles"]),
        "boxes": _ragged(out["boxes"]),
        "error": np.asarray(out["error"], dtype=object),
    }


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    holder = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        holder[i] = a
    return holder


class CrackPredictor:
    """Loads the model once per actor; scores every tile of a batch of images."""

    def __init__(self, model_uri: str, batch_size: int, threads: int = 0, fp32: bool = False):
        import torch

        from cracknet.engine import Precision
        from cracknet.model import load_artifact, preprocessing_of

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.model, self.card = load_artifact(model_uri)
        self.spec = preprocessing_of(self.card)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = Precision.for_inference(self.device, allow_bf16=not fp32)
        self.model.to(self.device)
        if self.precision.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.batch_size = batch_size
        self.threshold = float(self.card["threshold"])

    def predict_tiles(self, tiles: np.ndarray) -> np.ndarray:
        from cracknet.transforms import eval_preset

        torch = self.torch
        probs = []
        with torch.no_grad():
            for start in range(0, len(tiles), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(tiles[start:start + self.batch_size])).to(self.device)
                x = self.precision.inputs(eval_preset(x, self.spec))
                with self.precision.autocast(self.device):
                    logits = self.model(x).squeeze(1)
                probs.append(torch.sigmoid(logits.float()).cpu().numpy())
        return np.concatenate(probs) if probs else np.zeros(0, dtype=np.float32)

    def __call__(self, batch: dict) -> dict:
        tiles = [np.asarray(t).reshape(-1, *np.asarray(t).shape[-3:]) if np.asarray(t).size else None
                 for t in batch["tiles"]]
        counts = [0 if t is None else len(t) for t in tiles]
        flat = [t for t in tiles if t is not None]
        probs = self.predict_tiles(np.concatenate(flat)) if flat else np.zeros(0, dtype=np.float32)
        per_image, tile_probs, start = [], [], 0
        for n in counts:
            chunk = probs[start:start + n].astype(np.float32)
            start += n
            per_image.append(float(chunk.max()) if n else np.nan)
            tile_probs.append(chunk)
        crack = np.asarray(per_image, dtype=np.float32)
        return {
            "image_uri": batch["image_uri"],
            "version": batch["version"],
            "width": batch["width"],
            "height": batch["height"],
            "error": batch["error"],
            "crack_probability": crack,
            "tiles_scored": np.asarray(counts, dtype=np.int32),
            "tile_probabilities": _ragged(tile_probs),
            "boxes": batch["boxes"],
        }


def write_parts(batch: dict, output: str, run_id: str, run_date: str, model_id: str, threshold: float,
                scored_at: str, metadata: dict) -> dict:
    """Write one images part (and one tiles part when any image was tiled); return their names."""
    n = len(batch["image_uri"])
    errors = [e if isinstance(e, str) and e else None for e in batch["error"]]
    probs = np.asarray(batch["crack_probability"], dtype=np.float32)
    ok = np.array([e is None for e in errors])
    when = datetime.fromisoformat(scored_at)
    images = pa.table({
        "image_uri": pa.array(list(batch["image_uri"]), pa.string()),
        "version": pa.array(list(batch["version"]), pa.string()),
        "crack_probability": pa.array(probs, pa.float32(), mask=~ok),
        "is_crack": pa.array(probs >= threshold, pa.bool_(), mask=~ok),
        "tiles_scored": pa.array(np.where(ok, batch["tiles_scored"], 0), pa.int32()),
        "width": pa.array(batch["width"], pa.int32(), mask=~ok),
        "height": pa.array(batch["height"], pa.int32(), mask=~ok),
        "error": pa.array(errors, pa.string()),
        "model_id": pa.array([model_id] * n, pa.string()),
        "run_id": pa.array([run_id] * n, pa.string()),
        "scored_at": pa.array([when] * n, pa.timestamp("us", tz="UTC")),
    }, schema=IMAGES_SCHEMA).replace_schema_metadata({"cracknet": json.dumps(metadata)})
    name = f"part-{run_id}-{uuid.uuid4().hex[:12]}.parquet"
    images_path = f"{IMAGES}/run_date={run_date}/{name}"
    _write_table(images, storage.join(output, images_path))

    rows = {"image_uri": [], "tile_x": [], "tile_y": [], "tile_w": [], "tile_h": [], "crack_probability": []}
    for uri, good, boxes, tile_probs in zip(batch["image_uri"], ok, batch["boxes"], batch["tile_probabilities"]):
        boxes = np.asarray(boxes).reshape(-1, 4)
        if not good or len(boxes) < 2:
            continue
        for (x, y, w, h), p in zip(boxes, np.asarray(tile_probs)):
            for key, value in zip(rows, (uri, int(x), int(y), int(w), int(h), float(p))):
                rows[key].append(value)
    tiles_path, m = "", len(rows["image_uri"])
    if m:
        tiles = pa.table({
            "image_uri": pa.array(rows["image_uri"], pa.string()),
            **{k: pa.array(v, pa.int32()) for k, v in rows.items() if k.startswith("tile_")},
            "crack_probability": pa.array(rows["crack_probability"], pa.float32()),
            "model_id": pa.array([model_id] * m, pa.string()),
            "run_id": pa.array([run_id] * m, pa.string()),
        }, schema=TILES_SCHEMA).replace_schema_metadata({"cracknet": json.dumps(metadata)})
        tiles_path = f"{TILES}/run_date={run_date}/{name}"
        _write_table(tiles, storage.join(output, tiles_path))
    # One row per written part, for the driver's manifest.
    return {
        "images_path": np.asarray([images_path], dtype=object),
        "images_rows": np.asarray([n], dtype=np.int64),
        "tiles_path": np.asarray([tiles_path], dtype=object),
        "tiles_rows": np.asarray([m], dtype=np.int64),
        "errors": np.asarray([int((~ok).sum())], dtype=np.int64),
    }


def _write_table(table, uri: str) -> None:
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", row_group_size=64 * 1024)
    storage.write_bytes(uri, buffer.getvalue())


# ---------------------------------------------------------------------------
# The driver


def run_scoring(cfg: ScoreConfig, log=print) -> dict:
    """Score every new image under ``cfg.input``; commit the results; return the run summary."""
    from cracknet.model import read_card

    started = time.monotonic()
    # Ray's workers do not share the driver's working directory: local paths become absolute.
    cfg = dataclasses.replace(cfg, model=storage.absolute(cfg.model), input=storage.absolute(cfg.input),
                              output=storage.absolute(cfg.output),
                              input_prefix=storage.absolute(cfg.input_prefix) if cfg.input_prefix else None)
    storage.require_bucket(cfg.output)
    card = read_card(cfg.model)
    inputs = list_inputs(cfg.input)
    if not inputs:
        raise CracknetError(f"No images (jpg, jpeg, png, tif) were found under {cfg.input}.")
    now = datetime.now(timezone.utc)
    run_id = now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]
    # One writer at a time: orphan clean-up and the commit are only safe while no other run writes here.
    with Lease(cfg.output, owner={"run_id": run_id, "model_id": card["model_id"]}, seconds=cfg.lease_seconds) as lease:
        manifests = committed_manifests(cfg.output)
        removed = remove_orphans(cfg.output, manifests)
        done = already_scored(cfg.output, card["model_id"], manifests)
        # A manifest row without a version counts as scored once its URI was scored at any version.
        done_uris = {u for u, _ in done}
        todo = [(u, v) for u, v in dict.fromkeys(inputs) if (u, v) not in done and not (v == "" and u in done_uris)]
        summary = {"run_id": run_id, "model_id": card["model_id"], "listed": len(inputs),
                   "skipped": len(inputs) - len(todo), "scored": 0, "errors": 0, "orphans_removed": removed,
                   "output": cfg.output}
        if todo:
            pipeline_started = time.monotonic()
            try:
                parts = _score_pipeline(cfg, card, todo, run_id, now).take_all()
            except Exception as exc:
                raise CracknetError(f"Scoring stopped and nothing from run {run_id} was committed: "
                                    f"{root_cause(exc)} Rerun to finish; what was committed before is kept.") from None
            summary["pipeline_seconds"] = round(time.monotonic() - pipeline_started, 2)
            manifest = {
                "run_id": run_id, "model_id": card["model_id"], "created_at": now.isoformat(), "input": cfg.input,
                IMAGES: [{"path": p["images_path"], "rows": int(p["images_rows"])} for p in parts],
                TILES: [{"path": p["tiles_path"], "rows": int(p["tiles_rows"])} for p in parts if p["tiles_path"]],
            }
            summary["scored"] = sum(m["rows"] for m in manifest[IMAGES])
            summary["errors"] = sum(int(p["errors"]) for p in parts)
            manifest["summary"] = summary
            lease.check()  # a run whose lease was taken over must not commit
            storage.write_bytes(storage.join(cfg.output, MANIFESTS, f"{run_id}.json"), json.dumps(manifest).encode())
    summary["seconds"] = round(time.monotonic() - started, 2)
    summary["images_per_second"] = round(summary["scored"] / summary["seconds"], 2) if summary["seconds"] else 0.0
    return summary


def _score_pipeline(cfg: ScoreConfig, card: dict, todo: list[tuple[str, str]], run_id: str, now: datetime):
    """The Ray Data pipeline: read and tile (CPU tasks) -> model (actor pool) -> Parquet parts (CPU tasks)."""
    import ray
    import ray.data

    from cracknet.model import preprocessing_of
    from cracknet.train import ensure_ray

    spec = dataclasses.replace(preprocessing_of(card), max_pixels=cfg.max_pixels)
    tile = cfg.tile_size or int(card["preprocessing"].get("source_size") or 227)
    ensure_ray(cfg.ray_address)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    actors = cfg.num_actors or max(1, gpus)
    # An autoscaling cluster may have no GPU worker up yet: --use-gpu asks for them anyway.
    gpus = max(gpus, 1 if cfg.use_gpu else 0)
    threads = 0 if gpus else max(1, int(ray.cluster_resources().get("CPU", 1)) // actors)
    metadata = {"model_id": card["model_id"], "model": card["folder"], "threshold": card["threshold"],
                "preprocessing": card["preprocessing"], "tile_size": tile, "tile_overlap": cfg.tile_overlap,
                "fp32": cfg.fp32, "run_id": run_id}
    return (
        ray.data.from_items([{"image_uri": u, "version": v} for u, v in todo])
        .map_batches(read_and_tile, fn_kwargs={"spec": spec, "tile": tile, "overlap": cfg.tile_overlap,
                                               "root": input_root(cfg)},
                     batch_size=cfg.read_batch_size, batch_format="numpy")
        .map_batches(CrackPredictor, fn_constructor_kwargs={"model_uri": card["folder"], "batch_size": cfg.batch_size,
                                                           "threads": threads, "fp32": cfg.fp32},
                     compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=1 if gpus else 0,
                     num_cpus=0 if gpus else 1, batch_size=cfg.batch_size, batch_format="numpy")
        .map_batches(write_parts, fn_kwargs={"output": cfg.output, "run_id": run_id, "run_date": now.date().isoformat(),
                                             "model_id": card["model_id"], "threshold": float(card["threshold"]),
                                             "scored_at": now.isoformat(), "metadata": metadata},
                     batch_size=cfg.rows_per_part, batch_format="numpy")
    )
