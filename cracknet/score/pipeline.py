"""The Ray Data stages of a scoring run, as plain functions and one actor class.

    read_plan -> read_and_tile (CPU tasks) -> CrackPredictor (the model, on an actor pool) -> write_parts

Each stage takes and returns Arrow-friendly batches, so each can be tested without Ray.
"""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np

from cracknet import storage
from cracknet.table import results


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
    from cracknet.predict.scorer import read_image

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
    from cracknet.predict.scorer import Found

    return Found(uri, version or "", error=refused, error_kind="listing") if refused else None


def read_encoded(batch: dict, root: str, images_per_pack: int, max_bytes: int, bytes_per_pack: int = 64 << 20):
    """image_uri, version -> packs of undecoded images, for model actors that decode on their GPU (see
    ``scorer.tiles_on_device``): the same reads and error policy as ``read_and_tile``, no decoding here."""
    from cracknet.predict.scorer import fetch

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
            "mm_per_pixel": [scale for _, _, scale in pending], "photo": [f.photo for f, _, _ in pending]}
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
            "mm_per_pixel": list(scales) if scales is not None else [None] * len(found),
            "photo": [f.photo for f in found]}
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
    cameras: tuple[tuple[str, float], ...] = ()  # sensor widths (mm) by camera, for a scale from the camera


def image_geometry(tile_maps: dict, boxes: np.ndarray, width: int, height: int, uri: str, version: str,
                   g: Geometry) -> tuple[str, str, str]:
    """One scored image's cracks (a JSON list of ``geometry.measure``'s cracks), their worst severity and its
    mask's URI ("" where none was written). At a scale too coarse to tell the first width class from the next
    (``scale.too_coarse``), cracks keep their millimetres but no severity (``photo_cracks``)."""
    from cracknet.images.decoding import mask_png
    from cracknet.measure.geometry import parse_width_classes, worst
    from cracknet.predict.stitching import photo_cracks

    classes = parse_width_classes(g.width_classes)
    mask, cracks = photo_cracks(tile_maps, boxes, width, height, g.threshold, g.width_threshold, g.mm_per_pixel,
                                classes)
    if mask is None or not mask.any():
        return "[]", "", ""
    mask_uri = ""
    if g.masks and cracks:
        mask_uri = storage.join(g.masks, results.mask_name(uri, version, g.root))
        storage.write_bytes(mask_uri, mask_png(mask))
    return json.dumps(cracks), worst([c["severity"] for c in cracks], classes) or "", mask_uri


class CrackPredictor:
    """A Ray Data actor around the one scorer: loads the model once, and only the model the driver named.

    Takes packs (see ``read_and_tile``, or ``read_encoded`` with ``decode_on_device``: JPEGs are then decoded
    and tiled on the actor's GPU in batches, anything else on its CPU), returns one row per image: its
    probability (the highest of its tiles), and each tile's box and probability; with ``geometry`` (a model
    with a mask decoder) also its cracks (``image_geometry``)."""

    def __init__(self, model_uri: str, model_id: str, batch_tiles: int, tiling, threads: int = 0, fp32: bool = False,
                 decode_on_device: bool = False, max_pixels: int = 0, max_bytes: int = 0, compile: bool = False,
                 geometry: Geometry | None = None):
        from cracknet.predict.scorer import Scorer

        self.scorer = Scorer.load(model_uri, batch_tiles=batch_tiles, tile_size=tiling.size, overlap=tiling.overlap,
                                  fp32=fp32, model_id=model_id, threads=threads, compile=compile)
        if max_pixels or max_bytes:
            self.scorer.spec = dataclasses.replace(self.scorer.spec, max_pixels=max_pixels or self.scorer.spec.max_pixels,
                                                   max_bytes=max_bytes or self.scorer.spec.max_bytes)
        self.decode_on_device = decode_on_device
        self.geometry = geometry if geometry is not None and self.scorer.draws_masks else None

    def __call__(self, batch: dict) -> dict:
        from cracknet.score.monitor import image_statistics

        out = {k: [] for k in ("image_uri", "version", "error", "error_kind", "width", "height", "crack_probability",
                               "tiles_scored", "tile_probabilities", "boxes", "cracks", "severity", "mask_uri",
                               "mm_per_pixel", "scale_source", "scale_note", "brightness", "sharpness",
                               "photo")}
        packs = self._decoded_packs(batch) if self.decode_on_device else self._tiled_packs(batch)
        for text, widths, heights, per_image, boxes in packs:
            if self.geometry is None:
                crack, tile_probs = self.scorer.score(per_image)
            else:
                crack, tile_probs, maps = self.scorer.score_masks(per_image, self.geometry.gate)
                for i, (scale, source, note) in enumerate(self._scales(text, widths, heights)):
                    found = ("", "", "") if per_image[i] is None else \
                        image_geometry(maps[i], boxes[i], int(widths[i]), int(heights[i]), text["image_uri"][i],
                                       text["version"][i], dataclasses.replace(self.geometry, mm_per_pixel=scale))
                    for key, value in zip(("cracks", "severity", "mask_uri", "scale_source", "scale_note"),
                                          (*found, source or "", note or "")):
                        out[key].append(value)
                    out["mm_per_pixel"].append(np.nan if scale is None else scale)
            for key in ("image_uri", "version", "error", "error_kind"):
                out[key] += text[key]
            out["photo"] += text.get("photo") or [""] * len(text["image_uri"])
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
            **{key: np.asarray(out[key], dtype=object) for key in ("cracks", "severity", "mask_uri", "scale_source",
                                                                   "scale_note")},
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
            "photo": np.asarray(out["photo"], dtype=object),
        }

    def _scales(self, text: dict, widths, heights):
        """Each image's (mm per pixel, its source, why severity cannot be graded at it): the manifest's, the run's
        flag, or its camera's (``images.scale``)."""
        from cracknet.images.scale import scale_of, too_coarse
        from cracknet.measure.geometry import parse_width_classes

        n = len(text["image_uri"])
        listed, photos = text.get("mm_per_pixel") or [None] * n, text.get("photo") or [""] * n
        classes, cameras = parse_width_classes(self.geometry.width_classes), dict(self.geometry.cameras)
        for i in range(n):
            photo = json.loads(photos[i]) if photos[i] else {}
            scale, source = scale_of(photo, int(widths[i]), int(heights[i]), listed[i], self.geometry.mm_per_pixel,
                                     cameras)
            yield scale, source, too_coarse(scale, classes)

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
        from cracknet.predict.scorer import Found, decode_into, tiles_on_device

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
