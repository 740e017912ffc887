"""Helpers shared by test modules: committing runs without Ray, and a crack-mask model that needs no training."""

from __future__ import annotations

import gzip
import io
import json
from datetime import datetime, timezone
from urllib.parse import quote_plus

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from conftest import BUCKET
from PIL import ExifTags, Image

from cracknet import storage
from cracknet.demo import synthetic
from cracknet.images.decoding import IMAGENET_MEAN, IMAGENET_STD
from cracknet.model.network import build_model
from cracknet.score import inputs, planning
from cracknet.table import results

DAY = datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)


def commit_run(output: str, uris: list[str], model_id: str = "model-a", run_id: str = "run-1",
               when: datetime = DAY, versions: list[str] | None = None, errors: list[str] | None = None,
               probabilities: list[float] | None = None, files: int = 1, kinds: list[str] | None = None) -> int:
    """Commit one run's rows the way scoring does (files written, then one commit), without Ray."""
    n = len(uris)
    probs = probabilities or [0.1 + 0.8 * (i % 2) for i in range(n)]
    errs = errors or [""] * n
    parts = []
    for chunk in np.array_split(np.arange(n), files):
        rows = {"image_uri": [uris[i] for i in chunk], "version": [(versions or ["v1"] * n)[i] for i in chunk],
                "width": [64] * len(chunk), "height": [64] * len(chunk), "error": [errs[i] for i in chunk],
                "crack_probability": [probs[i] for i in chunk], "tiles_scored": [1] * len(chunk)}
        if kinds:
            rows["error_kind"] = [kinds[i] for i in chunk]
        table = results.part_table(rows, [[] for _ in chunk], 0.5, model_id, run_id, when.isoformat(),
                                   {"model_id": model_id})
        parts.append(results.write_part(table, output, run_id, when.date().isoformat()))
    return results.commit(output, parts, run_id, {"model_id": model_id})


def listing_of(rows: list[tuple[str, str]]) -> pa.RecordBatchReader:
    table = pa.table({"image_uri": [u for u, _ in rows], "version": [v for _, v in rows]}, schema=inputs.LISTING)
    return pa.RecordBatchReader.from_batches(inputs.LISTING, table.to_batches(max_chunksize=2))


def planned(output: str, rows, model_id: str = "model-a", staging: str | None = None) -> tuple[dict, list]:
    staging = staging or storage.join(output, results.STAGING, "test")
    plan = planning.plan(listing_of(rows), output, model_id, staging)
    todo = [tuple(r.values()) for f in plan["files"] for r in pq.read_table(io.BytesIO(storage.read_bytes(f))).to_pylist()]
    return plan, todo


def write_inventory(prefix: str, fmt: str, objects: list[tuple[str, str, bool, bool]]) -> str:
    """An S3 Inventory report as S3 writes it: data files plus manifest.json (objects: key, etag, latest, deleted)."""
    client = storage.s3_client()
    schema = "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, ETag"
    keys = []
    for n, chunk in enumerate((objects[: len(objects) // 2], objects[len(objects) // 2:])):
        if fmt == "CSV":
            lines = [f'"{BUCKET}","{quote_plus(k)}","v{i}","{str(latest).lower()}","{str(deleted).lower()}",'
                     f'"10","{etag}"' for i, (k, etag, latest, deleted) in enumerate(chunk)]
            body, key = gzip.compress(("\n".join(lines) + "\n").encode()), f"inventory/data/part-{n}.csv.gz"
        else:
            table = pa.table({"bucket": [BUCKET] * len(chunk), "key": [k for k, *_ in chunk],
                              "version_id": [f"v{i}" for i in range(len(chunk))],
                              "is_latest": [o[2] for o in chunk], "is_delete_marker": [o[3] for o in chunk],
                              "size": [10] * len(chunk), "e_tag": [o[1] for o in chunk]})
            buffer = io.BytesIO()
            pq.write_table(table, buffer)
            body, key = buffer.getvalue(), f"inventory/data/part-{n}.parquet"
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{key}", Body=body)
        keys.append({"key": f"{prefix}/{key}", "size": len(body), "MD5checksum": "0"})
    manifest = {"sourceBucket": BUCKET, "destinationBucket": f"arn:aws:s3:::{BUCKET}", "version": "2016-11-30",
                "creationTimestamp": "1795830000000", "fileFormat": fmt, "files": keys}
    if fmt == "CSV":
        manifest["fileSchema"] = schema
    uri = f"s3://{BUCKET}/{prefix}/inventory/2026-11-23T01-00Z/manifest.json"
    storage.write_bytes(uri, json.dumps(manifest).encode())
    return uri


SIZE = 96


DARKER_THAN = 0.42  # the photos below: cracks at 0.2 in brightness, the surface at 0.55 to 0.75


def dark_line_segmenter(crack_logit: float = 8.0) -> torch.nn.Module:
    """A CrackSegmenter whose verdict is ``crack_logit`` for every tile and whose mask is "darker than
    DARKER_THAN": its full-resolution branch passes 0.42 minus the mean brightness on, the rest of the decoder
    is zero."""
    model = build_model(masks=True).eval()
    with torch.no_grad():
        for p in list(model.lateral.parameters()) + list(model.smooth.parameters()) + list(model.full.parameters()) \
                + list(model.head.parameters()):
            p.zero_()
        for bn in (model.smooth[1], model.full[1], model.full[4], model.head[1]):
            bn.weight.fill_(1.0)
        first, second = model.full[0], model.full[3]
        for c in range(3):  # normalised input back to brightness: -(v - mean) = -std * x - ... summed over colours
            first.weight[0, c, 1, 1] = -IMAGENET_STD[c] / 3
        first.bias[0] = DARKER_THAN - sum(IMAGENET_MEAN) / 3
        second.weight[0, 0, 1, 1] = 1.0
        model.head[0].weight[0, 64, 1, 1] = 1.0  # the first full-resolution channel, after the 64 pyramid channels
        model.head[3].weight[0, 0] = 200.0
        model.head[3].bias[0] = -200.0 * 0.01  # crack where at least 0.01 darker than the cut
        model.classifier.fc.weight.zero_()
        model.classifier.fc.bias.fill_(crack_logit)
    return model


def mask_card(threshold: float = 0.5) -> dict:
    """The card of a model with a mask decoder, made the way training makes one, its mask cut fixed at 0.5."""
    from conftest import model_card

    card = model_card(image_size=SIZE, source_size=SIZE, threshold=threshold, masks=True)
    card["mask"].update(threshold=0.5, width_threshold=0.5)
    return card


def draw_survey(folder, photos: int, seed: int = 4) -> dict:
    """Light grey PNG photos, every third without cracks, the others with one or two dark cracks 2-8 px wide;
    their true masks beside them under masks/, and each photo's cracks (width, length tip to tip)."""
    rng = np.random.default_rng(seed)
    truth = {}
    for i in range(photos):
        img = rng.uniform(0.55, 0.75, (SIZE, SIZE))
        mask, cracks = np.zeros((SIZE, SIZE), bool), []
        for _ in range(0 if i % 3 == 2 else 20):
            width = float(rng.integers(2, 9))
            points = synthetic.crack_path(rng, SIZE, margin=width + 2)
            own = synthetic.polyline_mask(points, width, mask.shape)
            if len(points) < 6 or (synthetic.polyline_mask(points, width + 8, mask.shape) & mask).any():
                continue
            mask |= own
            cracks.append({"width_px": width, "length_px": float(np.hypot(*np.diff(points, axis=0).T).sum()) + width})
            if len(cracks) == 1 + i % 2:
                break
        img[mask] = 0.2
        name = f"photo-{i:02d}"
        for sub, pixels in (("images", np.repeat(img[..., None] * 255, 3, -1)), ("masks", mask * 255.0)):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / sub / f"{name}.png")
        truth[name] = cracks
    return truth


def assert_backbone_equal(model, state):
    own = model.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(own[key], value), key


def png16(side: int) -> bytes:
    """A 16-bit greyscale PNG: a few KiB that decode to ``side`` x ``side`` x 2 bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((side, side), dtype=np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------
# Photos that say where and how they were taken


def dji_xmp(distance: str | None = "12.50", **fields) -> bytes:
    """An XMP packet as DJI aircraft write it: drone-dji attributes, and the range finder's ``distance`` (metres)
    as an element where one is given."""
    attributes = " ".join(f'drone-dji:{name}="{value}"' for name, value in fields.items())
    ranged = f"<drone-dji:LRFTargetDistance>{distance}</drone-dji:LRFTargetDistance>".encode() if distance else b""
    return (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            b'<rdf:Description xmlns:drone-dji="http://www.dji.com/drone-dji/1.0/" ' + attributes.encode() +
            b'>' + ranged + b'</rdf:Description></rdf:RDF></x:xmpmeta>')


def jpeg(gps: dict | None = None, details: dict | None = None, base: dict | None = None, xmp: bytes | None = None,
         size=(64, 48), image: Image.Image | None = None) -> bytes:
    """A JPEG whose EXIF (base tags, GPS and Exif IFDs) and XMP the test chose."""
    exif = Image.Exif()
    for tag, value in (base or {}).items():
        exif[tag] = value
    if gps:
        exif.get_ifd(ExifTags.IFD.GPSInfo).update(gps)
    if details:
        exif.get_ifd(ExifTags.IFD.Exif).update(details)
    buffer = io.BytesIO()
    extra = {"xmp": xmp} if xmp else {}
    (image or Image.new("RGB", size, (120, 120, 120))).save(buffer, "JPEG", exif=exif, **extra)
    return buffer.getvalue()


DRONE_GPS = {ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (47.0, 22.0, 12.34),
             ExifTags.GPS.GPSLongitudeRef: "W", ExifTags.GPS.GPSLongitude: (8.0, 32.0, 5.5),
             ExifTags.GPS.GPSAltitudeRef: b"\x00", ExifTags.GPS.GPSAltitude: 512.25}
DRONE_DETAILS = {ExifTags.Base.DateTimeOriginal: "2026:11:23 10:15:30", ExifTags.Base.OffsetTimeOriginal: "+01:00",
                 ExifTags.Base.FocalLength: 8.8, ExifTags.Base.FocalLengthIn35mmFilm: 24}
DRONE_BASE = {ExifTags.Base.Make: "DJI", ExifTags.Base.Model: "FC6310"}


# A photo in the results table with a ground frame (cracknet.table.places): looking straight down from PLACED_AT,
# PLACED_SIZE pixels, so that its centre is pixel (50, 40).
PLACED_AT, PLACED_SIZE = (47.0, 8.0), (101, 81)


def placed_photo(pitch: float | None = -90.0, yaw: float | None = 90.0, lat: float | None = PLACED_AT[0]) -> str:
    """What scoring keeps of a photo's header (``PhotoMetadata.table_fields``), as JSON."""
    return json.dumps({"latitude": lat, "longitude": None if lat is None else PLACED_AT[1], "gimbal_pitch_deg": pitch,
                       "gimbal_yaw_deg": yaw, "camera": "DJI FC6310", "captured_at": "2026-11-23T09:00:00+00:00"})


def horizontal_crack(width: int = 3, mm_per_pixel: float = 10.0) -> list[dict]:
    """One crack of a PLACED_SIZE photo, along row 20 from x = 60 to x = 90, 3 px wide (its box's centre is pixel
    (75, 20)), measured as scoring measures it."""
    from cracknet.measure.geometry import measure

    mask = np.zeros(PLACED_SIZE[::-1], dtype=bool)
    mask[20 - width // 2: 20 - width // 2 + width, 60:91] = True
    cracks = measure(mask, mm_per_pixel=mm_per_pixel)
    assert len(cracks) == 1 and cracks[0]["bbox"]["x"] == 60 and cracks[0]["bbox"]["w"] == 31
    return cracks


def commit_photos(output: str, photos: list[str], cracks: list[list[dict]], probabilities: list[float],
                  mm: float | None = 10.0, uris: list[str] | None = None, run_id: str = "run-1",
                  when: datetime = DAY) -> None:
    """Commit one run of PLACED_SIZE photos with their headers' fields and measured cracks, as scoring does."""
    n = len(photos)
    rows = {"image_uri": uris or [f"s3://survey/deck/{i}.jpg" for i in range(n)], "version": ["v"] * n,
            "width": [PLACED_SIZE[0]] * n, "height": [PLACED_SIZE[1]] * n, "error": [""] * n,
            "crack_probability": probabilities, "tiles_scored": [1] * n, "photo": photos,
            "cracks": [json.dumps(c) for c in cracks], "severity": [None] * n,
            "mm_per_pixel": [float("nan") if mm is None else mm] * n, "mask_uri": [None] * n}
    table = results.part_table(rows, [[]] * n, 0.5, "model-a", run_id, when.isoformat(), {})
    results.commit(output, [results.write_part(table, output, run_id, when.date().isoformat())], run_id, {})
