"""Hostile inputs to a scoring run: each becomes an error row or is scored normally; nothing crashes,
nothing outside the input location is read, and nothing is written outside the output location."""

import io
import os
import struct
import zlib

import numpy as np
import pytest
from conftest import BUCKET, png_with_declared_size
from PIL import Image

from cracknet import storage
from cracknet.demo.synthetic import concrete, image_bytes
from cracknet.errors import CracknetError
from cracknet.score.config import ScoreConfig
from cracknet.score.driver import run_scoring
from cracknet.table.query import run_query

pytestmark = pytest.mark.ray


def jpeg_with_huge_metadata(rng) -> bytes:
    """A valid JPEG carrying a ~1 MB ICC profile (split over many APP2 segments) and a 60 KB EXIF blob."""
    img = concrete(rng, 64)
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000  # ImageDescription
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", icc_profile=os.urandom(1_000_000), exif=exif.tobytes())
    return buffer.getvalue()


def png_with_text_bomb() -> bytes:
    """A small PNG whose zTXt chunk inflates to 200 MB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + b"\x80" * 3 * 16 for _ in range(16))
    bomb = zlib.compress(b"A" * 200_000_000, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0))
            + chunk(b"zTXt", b"Comment\x00\x00" + bomb) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_hostile_names_metadata_and_manifests(ray_cluster, random_model, store_root, tmp_path):
    rng = np.random.default_rng(3)
    good = image_bytes(concrete(rng, 64))
    survey = storage.join(store_root, "survey")
    names = {
        "with space/é ü 漢字 crack.jpg": good,                      # spaces and unicode
        ("long-" + "x" * 200 + ".jpg"): good,                      # a very long name
        "metadata/huge-icc-and-exif.jpg": jpeg_with_huge_metadata(rng),
        "metadata/text-bomb.png": png_with_text_bomb(),
        "bombs/declared-huge.png": png_with_declared_size(200_000, 200_000),
        "zero/empty.jpg": b"",
        "folder.jpg/inside.jpg": good,                             # a directory named like an image
    }
    for rel, data in names.items():
        storage.write_bytes(storage.join(survey, *rel.split("/")), data)
    outside = storage.join(store_root, "private", "secret.jpg")
    storage.write_bytes(outside, good)
    if storage.is_s3(store_root):
        # S3 keys may hold ".." literally; one under survey/ that climbs out of it.
        prefix = storage.split_s3(survey)[1]
        storage.s3_client().put_object(Bucket=BUCKET, Key=f"{prefix}/../private/climbing.jpg", Body=good)
        storage.s3_client().put_object(Bucket=BUCKET, Key=f"{prefix}/marker.jpg/", Body=b"")
    else:
        os.symlink(outside, os.path.join(survey, "link-out.jpg"))   # a symlink pointing outside the input

    results = storage.join(store_root, "results")
    before = set(storage.list_files(store_root))
    summary = run_scoring(ScoreConfig(model=str(random_model), input=survey, output=results, batch_size=8),
                          log=lambda _: None)
    rows = {r["image_uri"][len(survey) + 1:]: r for r in run_query(results, "SELECT * FROM images").to_pylist()}

    for rel in ("with space/é ü 漢字 crack.jpg", "long-" + "x" * 200 + ".jpg", "metadata/huge-icc-and-exif.jpg",
                "folder.jpg/inside.jpg"):
        assert rows[rel]["error"] is None and 0 <= rows[rel]["crack_probability"] <= 1, rows[rel]
    assert "exceeds the limit" in rows["bombs/declared-huge.png"]["error"]
    assert "empty" in rows["zero/empty.jpg"]["error"]
    # Pillow refuses a text chunk that inflates past its MAX_TEXT_CHUNK before any pixel is decoded.
    assert "Decompressed data too large" in rows["metadata/text-bomb.png"]["error"]
    climbed = "../private/climbing.jpg" if storage.is_s3(store_root) else "link-out.jpg"
    assert rows[climbed]["crack_probability"] is None
    assert "lies outside the input location" in rows[climbed]["error"]
    assert "folder.jpg" not in rows and "marker.jpg/" not in rows
    assert summary["scored"] == len(rows)

    # Nothing was written anywhere but under the output location.
    after = set(storage.list_files(store_root))
    assert {u for u in after - before if not u.startswith(results + "/")} == set()


def test_a_manifest_cannot_make_the_job_read_outside_its_location(ray_cluster, random_model, tmp_path):
    rng = np.random.default_rng(4)
    inside, elsewhere = tmp_path / "survey", tmp_path / "elsewhere"
    for folder in (inside, elsewhere):
        folder.mkdir()
        (folder / "img.jpg").write_bytes(image_bytes(concrete(rng, 64)))
    manifest = inside / "manifest.csv"
    manifest.write_text("image_uri\n" + "\n".join([str(inside / "img.jpg"), str(elsewhere / "img.jpg"),
                                                   f"{inside}/../elsewhere/img.jpg", "/etc/hostname.jpg"]) + "\n")
    results = tmp_path / "results"
    run_scoring(ScoreConfig(model=str(random_model), input=str(manifest), output=str(results)), log=lambda _: None)
    rows = run_query(str(results), "SELECT image_uri, error FROM images ORDER BY image_uri").to_pylist()
    assert len(rows) == 4
    refused = [r for r in rows if r["error"] and "lies outside the input location" in r["error"]]
    assert len(refused) == 3 and all(str(inside) not in r["image_uri"] or ".." in r["image_uri"] for r in refused)

    # --input-prefix widens the location on purpose; the output must then lie outside the wider location too.
    with pytest.raises(CracknetError, match="overlaps the input"):
        run_scoring(ScoreConfig(model=str(random_model), input=str(manifest), output=str(tmp_path / "results-wide"),
                                input_prefix=str(tmp_path)), log=lambda _: None)
    wider = tmp_path.parent / f"{tmp_path.name}-results-wide"
    run_scoring(ScoreConfig(model=str(random_model), input=str(manifest), output=str(wider),
                            input_prefix=str(tmp_path)), log=lambda _: None)
    rows = {r["image_uri"]: r["error"] for r in run_query(str(wider), "SELECT * FROM images").to_pylist()}
    assert rows[str(elsewhere / "img.jpg")] is None and "lies outside" in rows["/etc/hostname.jpg"]
