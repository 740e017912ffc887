"""Bulk scoring on a real local Ray: error rows, tiling, incremental reruns, Delta commits, and querying."""

import dataclasses
import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import BUCKET, png_with_declared_size
from helpers import DRONE_BASE, DRONE_DETAILS, DRONE_GPS, dji_xmp, jpeg
from deltalake import DeltaTable
from PIL import Image

from cracknet import storage
from cracknet.cli import main as cli_main
from cracknet.demo.synthetic import concrete, draw_crack, image_bytes
from cracknet.images.decoding import tile_boxes
from cracknet.score.config import ScoreConfig
from cracknet.score.driver import run_scoring
from cracknet.table.compact import compact
from cracknet.table.query import run_query
from cracknet.table.results import commit_metadata

pytestmark = pytest.mark.ray

BAD = {"empty.jpg": "empty", "truncated.jpg": "unreadable", "notes.png": "not a recognised image",
       "bomb.png": "exceeds the limit"}


@pytest.fixture(scope="module")
def model_dir(random_model):
    return random_model


def encode(img, fmt, **kw):
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def survey_images(rng):
    """Good images of every awkward kind, a large photo to tile, and hostile or broken files."""
    files = {}
    for i in range(12):
        img = concrete(rng, 96)
        if i % 2:
            draw_crack(img, rng)
        files[f"bridge-a/pier-{i // 6}/img{i:02d}.jpg"] = image_bytes(img)
    big = Image.new("RGB", (400, 300), (150, 150, 150))
    exif = Image.Exif()
    exif[0x0112] = 6
    files["bridge-b/drone/large.jpg"] = encode(big, "JPEG", quality=85)
    files["bridge-b/rotated.JPG"] = encode(Image.new("RGB", (96, 60), (90, 90, 90)), "JPEG", exif=exif.tobytes())
    files["bridge-b/cmyk.jpg"] = encode(Image.new("CMYK", (64, 64), (0, 0, 0, 80)), "JPEG")
    files["bridge-b/grey16.png"] = encode(Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16)), "PNG")
    files["bridge-b/alpha.png"] = encode(Image.new("RGBA", (64, 64), (100, 100, 100, 10)), "PNG")
    good = image_bytes(concrete(rng, 96))
    files["bad/empty.jpg"] = b""
    files["bad/truncated.jpg"] = good[: len(good) // 3]
    files["bad/notes.png"] = b"inspection notes, not an image"
    files["bad/bomb.png"] = png_with_declared_size(100_000, 100_000)
    return files


def write_tree(root, files):
    for rel, data in files.items():
        storage.write_bytes(storage.join(root, *rel.split("/")), data)


def count(results, sql):
    return run_query(str(results), sql).to_pylist()


def test_scoring_writes_one_row_per_image_and_error_rows_for_bad_ones(ray_cluster, model_dir, tmp_path):
    files = survey_images(np.random.default_rng(0))
    write_tree(str(tmp_path / "in"), files)
    os.mkdir(tmp_path / "in" / "bad" / "folder.jpg")  # a directory named like an image is not an image
    results = tmp_path / "results"
    summary = run_scoring(ScoreConfig(model=str(model_dir), input=str(tmp_path / "in"), output=str(results),
                                      batch_size=16, read_batch_size=4), log=lambda _: None)
    assert summary["scored"] == len(files) and summary["errors"] == len(BAD) and summary["skipped"] == 0

    rows = {r["image_uri"].rsplit("/", 1)[-1]: r for r in count(results, "SELECT * FROM images")}
    assert len(rows) == len(files)
    for name, reason in BAD.items():
        assert rows[name]["crack_probability"] is None and reason in rows[name]["error"], rows[name]
    good = [r for n, r in rows.items() if n not in BAD]
    assert all(r["error"] is None and 0.0 <= r["crack_probability"] <= 1.0 for r in good)
    assert all(r["is_crack"] == (r["crack_probability"] >= 0.5) for r in good)
    assert (rows["rotated.JPG"]["width"], rows["rotated.JPG"]["height"]) == (60, 96)  # EXIF applied

    # The large photo is tiled at the model's source scale; its probability is the tile maximum.
    large = rows["large.jpg"]
    expected_tiles = len(tile_boxes(400, 300, 96, 0.25))
    assert large["tiles_scored"] == expected_tiles > 1
    tiles = count(results, f"SELECT * FROM tiles_above('{large['image_uri']}', 0.0)")
    assert len(tiles) == expected_tiles
    assert max(t["crack_probability"] for t in tiles) == pytest.approx(large["crack_probability"])
    assert all(r["tiles_scored"] == 1 for n, r in rows.items() if n not in BAD and n != "large.jpg")

    # A Delta table partitioned by run_date: zstd Parquet, the model in the commit and in each file.
    (part,) = results.glob("run_date=*/*.parquet")
    meta = pq.ParquetFile(part).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert json.loads(meta.metadata[b"cracknet"])["model_id"] == summary["model_id"]
    commit = commit_metadata(str(results), summary["run_id"])
    assert commit["model_id"] == summary["model_id"] and commit["summary"]["scored"] == len(files)
    assert commit["threshold"] == 0.5 and commit["tile_size"] == 96


def test_reruns_score_only_new_images_and_unreferenced_files_are_never_read(ray_cluster, model_dir, tmp_path):
    rng = np.random.default_rng(1)
    inputs, results = str(tmp_path / "in"), tmp_path / "results"
    write_tree(inputs, {f"s/{i}.jpg": image_bytes(concrete(rng, 96)) for i in range(6)})
    cfg = ScoreConfig(model=str(model_dir), input=inputs, output=str(results), batch_size=8)
    first = run_scoring(cfg, log=lambda _: None)
    assert (first["scored"], first["skipped"]) == (6, 0)

    said = []
    again = run_scoring(cfg, log=said.append)
    assert (again["scored"], again["skipped"]) == (0, 6)
    assert said == [f"Planned run {again['run_id']}: 0 of 6 listed images to score."]  # what a person reads

    # A file written by a run that died before committing: no reader sees it, and vacuum deletes it.
    orphan = results / "run_date=2026-01-01" / "part-dead-run.parquet"
    committed_part = next(results.glob("run_date=*/*.parquet"))
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(committed_part.read_bytes())
    assert count(results, "SELECT count(*) AS n FROM images")[0]["n"] == 6

    write_tree(inputs, {"s/new.jpg": image_bytes(concrete(rng, 96))})
    third = run_scoring(cfg, log=lambda _: None)
    assert (third["scored"], third["skipped"]) == (1, 6)
    per_image = count(results, "SELECT image_uri, count(*) AS n FROM images GROUP BY 1")
    assert len(per_image) == 7 and all(r["n"] == 1 for r in per_image)
    assert DeltaTable(str(results)).to_pyarrow_table().num_rows == 7  # the table's own reader agrees
    compact(str(results), retention_hours=0)
    assert not orphan.exists() and count(results, "SELECT count(*) AS n FROM images")[0]["n"] == 7


def test_scoring_from_s3_with_a_manifest_and_querying_from_the_cli(ray_cluster, s3_endpoint, model_dir,
                                                                   tmp_path, capsys):
    rng = np.random.default_rng(2)
    prefix = f"s3://{BUCKET}/survey/2026-11-24"
    write_tree(prefix, {f"tunnel-{t}/{i}.jpg": image_bytes(concrete(rng, 96)) for t in "xy" for i in range(3)})
    storage.write_bytes(f"{prefix}/tunnel-x/gone.jpg", image_bytes(concrete(rng, 96)))
    listed = sorted(storage.list_files(prefix))
    manifest = f"s3://{BUCKET}/survey/manifest.csv"
    storage.write_bytes(manifest, ("image_uri\n" + "\n".join(listed) + "\n").encode())
    storage.resolve(f"{prefix}/tunnel-x/gone.jpg")[0].delete_file(f"{BUCKET}/survey/2026-11-24/tunnel-x/gone.jpg")

    results = f"s3://{BUCKET}/results"
    # A manifest's images may lie anywhere in its bucket, so results in that bucket need --input-prefix to say
    # where the images are (which also narrows what the manifest can make the job read).
    assert cli_main(["score", "--model", str(model_dir), "--input", manifest, "--output", results]) == 2
    assert f"overlaps the input s3://{BUCKET}:" in capsys.readouterr().err
    assert cli_main(["score", "--model", str(model_dir), "--input", manifest, "--output", results,
                     "--input-prefix", prefix]) == 0
    assert "Scored 7 images (1 errors)" in capsys.readouterr().out

    assert cli_main(["query", "--results", results, "--format", "json",
                     "SELECT structure, images, errors FROM structures ORDER BY structure"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [(r["structure"].rsplit("/", 1)[-1], r["images"], r["errors"]) for r in summary] == \
        [("tunnel-x", 4, 1), ("tunnel-y", 3, 0)]
    assert cli_main(["query", "--results", results, "SELECT image_uri, error FROM failures"]) == 0
    out = capsys.readouterr().out
    assert "gone.jpg" in out and "does not exist" in out and "(1 rows)" in out
    assert cli_main(["query", "--results", results, "--format", "csv",
                     "SELECT count(*) AS n FROM likely_cracks_since('2000-01-01')"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "n"


def test_query_errors_are_one_line(tmp_path, capsys):
    tmp_path.joinpath("results").mkdir()
    assert cli_main(["query", "--results", str(tmp_path / "results"), "SELECT nope FROM images"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cracknet: error: The query failed") and "\n" not in err
    assert cli_main(["query", "--results", str(tmp_path / "missing"), "SELECT 1"]) == 2


def test_scoring_from_an_s3_inventory_report_and_again_the_next_night(ray_cluster, s3_endpoint, model_dir):
    from helpers import write_inventory

    rng = np.random.default_rng(5)
    prefix = "inventory-run"
    keys = [f"{prefix}/survey/pier-{i % 2}/DJI_{i:04d}.JPG" for i in range(4)]
    objects = []
    for key in keys:
        storage.write_bytes(f"s3://{BUCKET}/{key}", image_bytes(concrete(rng, 96)))
        etag = storage.s3_client().head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
        objects.append((key, etag, True, False))
    manifest = write_inventory(prefix, "CSV", objects + [(f"{prefix}/survey/notes.txt", "n", True, False)])
    cfg = ScoreConfig(model=str(model_dir), input=manifest, output=f"s3://{BUCKET}/{prefix}/results",
                      input_prefix=f"s3://{BUCKET}/{prefix}/survey")
    first = run_scoring(cfg, log=lambda _: None)
    assert (first["listed"], first["scored"], first["errors"]) == (4, 4, 0)
    rows = count(cfg.output, "SELECT image_uri, version FROM images ORDER BY 1")
    assert rows == [{"image_uri": f"s3://{BUCKET}/{k}", "version": e} for k, e, *_ in sorted(objects)]
    again = run_scoring(cfg, log=lambda _: None)
    assert (again["scored"], again["skipped"]) == (0, 4)


def test_runs_record_themselves_errors_heal_and_a_rollback_makes_the_older_model_current(ray_cluster, model_dir,
                                                                                        tmp_path):
    from conftest import model_card

    from cracknet.model.card import read_card
    from cracknet.model.network import build_model, save_artifact
    from cracknet.table import results as results_format

    rng = np.random.default_rng(4)
    inputs, output = str(tmp_path / "in"), str(tmp_path / "results")
    write_tree(inputs, {f"s/{i}.jpg": image_bytes(concrete(rng, 96)) for i in range(4)})
    card_a = read_card(str(model_dir))
    cfg = ScoreConfig(model=str(model_dir), input=inputs, output=output, batch_size=8)
    first = run_scoring(cfg, log=lambda _: None)
    assert first["scored"] == 4

    # Last night model A could not read two new photos: one was refused (transient), one is not an image.
    denied, broken = os.path.join(inputs, "s", "denied.jpg"), os.path.join(inputs, "s", "broken.jpg")
    write_tree(inputs, {"s/denied.jpg": image_bytes(concrete(rng, 96)), "s/broken.jpg": image_bytes(concrete(rng, 96))})
    versions = {u: v for page in storage.iter_versions(inputs) for u, v in page}
    rows = {"image_uri": [denied, broken], "version": [versions[denied], versions[broken]], "width": [0, 0],
            "height": [0, 0], "error": [f"Cannot read {denied}: AccessDenied", "the file is not a recognised image"],
            "error_kind": ["transient", "permanent"], "crack_probability": [0.0, 0.0], "tiles_scored": [0, 0]}
    part = results_format.write_part(results_format.part_table(rows, [None, None], 0.5, card_a["model_id"], "night",
                                                               "2026-11-30T02:00:00+00:00", {}),
                                     output, "night", "2026-11-30")
    results_format.commit(output, [part], "night", {"model_id": card_a["model_id"]})

    said = []
    healed = run_scoring(cfg, log=said.append)
    assert healed["scored"] == 1 and healed["errors"] == 0 and healed["errors_retried"] == 1
    assert "(1 of them after an error that may pass)" in said[0]
    assert count(output, f"SELECT error IS NULL AS ok FROM current WHERE image_uri = '{denied}'") == [{"ok": True}]
    assert count(output, f"SELECT error FROM current WHERE image_uri = '{broken}'")[0]["error"]
    # (--retry-errors, which plans the permanent one too, is held to its word in test_runs.py.)

    # Model B takes over; then the team rolls back to A: nothing is rescored, yet A's rows are current again.
    model_b = tmp_path / "model-b"
    save_artifact(str(model_b), build_model().state_dict(), model_card(threshold=0.3))
    card_b = read_card(str(model_b))
    assert run_scoring(dataclasses.replace(cfg, model=str(model_b)), log=lambda _: None)["scored"] == 6
    assert count(output, "SELECT DISTINCT model_id FROM current") == [{"model_id": card_b["model_id"]}]
    back = run_scoring(cfg, log=lambda _: None)
    assert back["scored"] == 0
    assert count(output, "SELECT DISTINCT model_id FROM current") == [{"model_id": card_a["model_id"]}]

    recorded = count(output, "SELECT run_id, model_id, weights_sha256, threshold, scored, results_version FROM runs "
                             "ORDER BY started_at")
    assert [r["run_id"] for r in recorded] == [first["run_id"], "night", healed["run_id"], recorded[3]["run_id"],
                                               back["run_id"]]
    assert recorded[0] == {"run_id": first["run_id"], "model_id": card_a["model_id"],
                           "weights_sha256": card_a["weights_sha256"], "threshold": card_a["threshold"],
                           "scored": 4, "results_version": 1}
    assert recorded[-1]["results_version"] is None and recorded[3]["threshold"] == 0.3


def test_rows_say_where_each_photo_was_taken_from_its_own_header(ray_cluster, model_dir, tmp_path):
    rng = np.random.default_rng(3)
    nadir = dji_xmp(RelativeAltitude="+10.20", GimbalPitchDegree="-90.00", GimbalYawDegree="+45.50")
    files = {"deck/DJI_0001.JPG": jpeg(DRONE_GPS, DRONE_DETAILS, DRONE_BASE, nadir, image=concrete(rng, 96)),
             "deck/phone.jpg": image_bytes(concrete(rng, 96)),
             "deck/broken.jpg": jpeg(DRONE_GPS, DRONE_DETAILS, DRONE_BASE, nadir)[:300]}
    write_tree(str(tmp_path / "in"), files)
    run_scoring(ScoreConfig(model=str(model_dir), input=str(tmp_path / "in"), output=str(tmp_path / "results")),
                log=lambda _: None)
    rows = {r["image_uri"].rsplit("/", 1)[-1]: r for r in count(
        tmp_path / "results", "SELECT image_uri, error, latitude, longitude, altitude_m, captured_at, camera, "
                              "focal_length_mm, gimbal_pitch_deg, gimbal_yaw_deg, distance_m, distance_source "
                              "FROM images")}
    drone = rows["DJI_0001.JPG"]
    assert drone["latitude"] == pytest.approx(47 + 22 / 60 + 12.34 / 3600)
    assert drone["longitude"] == pytest.approx(-(8 + 32 / 60 + 5.5 / 3600))
    assert (drone["camera"], drone["gimbal_pitch_deg"], drone["gimbal_yaw_deg"]) == ("DJI FC6310", -90.0, 45.5)
    assert drone["altitude_m"] == pytest.approx(512.25) and drone["focal_length_mm"] == pytest.approx(8.8)
    assert drone["captured_at"].isoformat().startswith("2026-11-23T09:15:30")
    assert (drone["distance_m"], drone["distance_source"]) == (pytest.approx(12.5), "range finder")
    assert all(v is None for k, v in rows["phone.jpg"].items() if k not in ("image_uri", "error"))
    assert rows["broken.jpg"]["error"] and rows["broken.jpg"]["latitude"] is None  # an error row has no place
