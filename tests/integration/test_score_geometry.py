"""Crack geometry in the nightly job: masks decoded where the gate lets them, measured, written into the results
table (nested cracks and per-image summaries), read back by DuckDB and deltalake, masks written as PNGs.

The model here is built by hand so that its mask is known: its decoder calls a pixel crack where the photo is
dark, and the photos are light grey surfaces with dark cracks of known widths and centre lines drawn on them
(lossless PNGs), so what the table says can be checked against exact truth."""


import json
import os

import numpy as np
import pytest
from helpers import (DRONE_BASE, DRONE_DETAILS, DRONE_GPS, SIZE, dark_line_segmenter, dji_xmp, draw_survey, jpeg,
                     mask_card)
from PIL import Image

from cracknet.cli import main as cli_main
from cracknet.errors import CracknetError
from cracknet.images.decoding import Preprocessing
from cracknet.model.network import save_artifact
from cracknet.predict.scorer import Scorer
from cracknet.score.config import ScoreConfig
from cracknet.score.driver import run_scoring
from cracknet.table import results, schema
from cracknet.table.compact import compact
from cracknet.table.query import run_query


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    root = tmp_path_factory.mktemp("geometry")
    truth = draw_survey(root / "tree", photos=9)
    model_dir = root / "model"
    save_artifact(str(model_dir), dark_line_segmenter().state_dict(), mask_card())
    return root, truth, model_dir


def test_the_gate_decides_which_tiles_the_decoder_sees():
    tiles = np.full((3, SIZE, SIZE, 3), 200, dtype=np.uint8)
    tiles[:, 40:44] = 40  # a dark band across each tile
    low = Scorer(dark_line_segmenter(crack_logit=-3.0), Preprocessing(SIZE), batch_tiles=4)
    best, per_tile = low.score([tiles])
    again, _, maps = low.score_masks([tiles], gate=0.5)
    assert np.array_equal(best, again) and maps == [{}]  # below the gate: no decoding, the same verdicts
    _, _, maps = low.score_masks([tiles], gate=0.0)
    assert sorted(maps[0]) == [0, 1, 2]
    drawn = maps[0][1] >= 0.5
    assert drawn[40:44].all() and not drawn[:38].any() and not drawn[46:].any()


def test_scoring_writes_crack_geometry_that_duckdb_and_deltalake_read(ray_cluster, survey, tmp_path):
    from deltalake import DeltaTable

    root, truth, model_dir = survey
    output = tmp_path / "results"
    # A manifest that knows one photo's scale (a drone survey's ground sample distance); the others take the run's.
    manifest = tmp_path / "tonight.csv"
    # Bad cells cost their own row only: a scale that is no number, and a photo listed with two scales.
    images = root / "tree" / "images"
    manifest.write_text("image_uri,mm_per_pixel\n" + "".join(
        f"{images / name}.png,{'0.5' if name == 'photo-00' else ''}\n" for name in truth)
        + f"{images}/bad-cell.png,inf\n{images}/twice.png,0.2\n{images}/twice.png,5\n")
    summary = run_scoring(ScoreConfig(model=str(model_dir), input=str(manifest), output=str(output),
                                      input_prefix=str(root / "tree"), batch_size=8, mm_per_pixel=0.2,
                                      masks=str(output / "_masks")), log=lambda _: None)
    assert summary["scored"] == 11 and summary["errors"] == 2
    rows = {r["image_uri"].rsplit("/", 1)[1][:-4]: r for r in run_query(
        str(output), "SELECT * EXCLUDE (tiles) FROM results").to_pylist()}
    assert rows.pop("bad-cell")["error"].startswith("The manifest's mm_per_pixel must be a finite number")
    twice = rows.pop("twice")
    assert twice["error_kind"] == "listing" and "2 times with different mm_per_pixel (0.2, 5.0)" in twice["error"]
    measured = []
    for name, cracks in truth.items():
        row = rows[name]
        assert row["crack_count"] == len(cracks) == len(row["cracks"]), name
        scale = 0.5 if name == "photo-00" else 0.2
        assert row["mm_per_pixel"] == pytest.approx(scale)
        assert row["scale_source"] == ("manifest" if name == "photo-00" else "flag")
        # 0.5 mm a pixel is coarser than the first class's bound (0.3 mm): millimetres, but no class, and why.
        assert (row["scale_note"] is not None) == (scale > 0.3)
        for found, true in zip(sorted(row["cracks"], key=lambda c: c["length_px"]),
                               sorted(cracks, key=lambda c: c["length_px"])):
            measured.append((found["width_mean_px"] - true["width_px"], found["length_px"] / true["length_px"] - 1))
            assert found["length_mm"] == pytest.approx(found["length_px"] * scale, rel=1e-5)
            assert found["severity"] == (None if scale > 0.3 else "wide" if found["width_p95_mm"] >= 1.25 else
                                         "moderate" if found["width_p95_mm"] >= 0.3 else "insignificant")
            assert found["paths"] and all(0 <= v["x"] < SIZE and 0 <= v["y"] < SIZE for v in found["paths"][0])
        if cracks:
            assert row["crack_length_px"] == pytest.approx(sum(c["length_px"] for c in row["cracks"]), rel=1e-5)
            assert row["severity"] in {c["severity"] for c in row["cracks"]}
            mask = np.asarray(Image.open(row["mask_uri"]))
            true_mask = np.asarray(Image.open(root / "tree" / "masks" / f"{name}.png")) > 0
            assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 255}
            assert ((mask > 0) & true_mask).sum() / ((mask > 0) | true_mask).sum() > 0.6
        else:
            assert row["cracks"] == [] and row["mask_uri"] is None and row["severity"] is None
    widths, lengths = np.array(measured).T
    assert len(measured) >= 6 and np.median(np.abs(widths)) <= 1.0 and np.median(np.abs(lengths)) <= 0.1

    per_crack = run_query(str(output), "SELECT * FROM cracks").to_pylist()
    assert len(per_crack) == sum(len(c) for c in truth.values())
    assert {"structure", "width_p95_mm", "orientation", "bbox_w", "paths"} <= set(per_crack[0])
    wide = run_query(str(output), "SELECT width_p95_mm FROM wider_than(1.25)").column(0).to_pylist()
    assert wide == sorted((c["width_p95_mm"] for c in per_crack if c["width_p95_mm"] > 1.25), reverse=True)
    assert per_crack[0]["mask_uri"].startswith(str(output / "_masks" / "images" / "photo-"))
    structure = run_query(str(output), "SELECT crack_length_mm FROM structures").column(0).to_pylist()
    assert structure[0] == pytest.approx(sum(c["length_mm"] for c in per_crack), rel=1e-4)

    # Other engines read the same nested column as it is stored.
    table = DeltaTable(str(output)).to_pyarrow_table(columns=["image_uri", "cracks", "severity"])
    assert table.schema.field("cracks").type == schema.FILE_SCHEMA.field("cracks").type
    run = results.commit_metadata(str(output), summary["run_id"])
    assert run["geometry"]["gate"] == 0.5 and run["geometry"]["mm_per_pixel"] == 0.2

    # The report draws the crack lines of the photos with the most crack length, and the width and length charts.
    from cracknet.report.build import build_report

    written = build_report(str(model_dir), str(tmp_path / "report"), results=str(output))
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Crack geometry" in page and "moderate: 0.3-1.25 mm" in page
    assert {"crack_widths.png", "crack_lengths.png", "crack_lines_1.png"} <= {p.rsplit("/", 1)[-1] for p in written["figures"]}

    # Masks have a lifecycle: a new version of a photo gets a mask of its own, and compaction deletes the mask of
    # the version it superseded (no kept row names it) and only that one.
    first = rows["photo-00"]["mask_uri"]
    photo = images / "photo-00.png"
    photo.write_bytes(photo.read_bytes())  # the same pixels, a new version (mtime) on local disk
    again = run_scoring(ScoreConfig(model=str(model_dir), input=str(images), output=str(output), batch_size=8,
                                    mm_per_pixel=0.2, masks=str(output / "_masks")), log=lambda _: None)
    assert again["scored"] == 1  # the new version only
    (second,) = [r["mask_uri"] for r in run_query(str(output), "SELECT image_uri, mask_uri FROM current").to_pylist()
                 if r["image_uri"] == str(photo)]
    assert second != first and os.path.exists(first) and os.path.exists(second)
    done = compact(str(output), retention_hours=0)
    assert done["masks_deleted"] == 1 and not os.path.exists(first) and os.path.exists(second)
    assert all(Image.open(r["mask_uri"]).size == (SIZE, SIZE) for name, r in rows.items()
               if r["mask_uri"] and name != "photo-00")


def test_masks_must_not_go_among_the_images_or_into_the_table(survey, tmp_path):
    root, _, model_dir = survey
    for masks, said in ((root / "tree" / "images" / "m", "overlaps the images"),
                        (tmp_path / "results" / "masks", "lies in the results table")):
        with pytest.raises(CracknetError, match=said):
            run_scoring(ScoreConfig(model=str(model_dir), input=str(root / "tree" / "images"),
                                    output=str(tmp_path / "results"), masks=str(masks)), log=lambda _: None)
    with pytest.raises(CracknetError, match=r"--mm-per-pixel must be in \[0.001, 1000\], got 0.0"):
        ScoreConfig(model="m", input="i", output="o", mm_per_pixel=0.0)
    from cracknet.score import inputs

    manifest = tmp_path / "scales.csv"
    manifest.write_text("image_uri,mm_per_pixel\na.jpg,0.3\nb.jpg,\n")
    assert inputs.listing(str(manifest), str(tmp_path)).read_all().column("mm_per_pixel").to_pylist() == \
        [pytest.approx(0.3), None]
    manifest.write_text("image_uri,mm_per_pixel\na.jpg,0.3\nb.jpg,-1\n")
    assert [r["listing_error"] for r in inputs.listing(str(manifest), str(tmp_path)).read_all().to_pylist()] == \
        [None, "The manifest's mm_per_pixel must be in [0.001, 1000], got '-1'; give a scale in millimetres per "
               "pixel, or leave the cell empty for the run's --mm-per-pixel."]


def test_a_table_older_than_the_geometry_columns_reads_them_as_null_and_gains_them(tmp_path):
    from deltalake import DeltaTable, write_deltalake

    old = schema.SCHEMA
    for name in schema.GEOMETRY_COLUMNS:
        old = old.remove(old.get_field_index(name))
    images = {"image_uri": ["/s/a.jpg"], "version": ["v"], "width": [4], "height": [4], "error": [""],
              "error_kind": [""], "crack_probability": [0.9], "tiles_scored": [1]}
    stored = results.part_table(images, [[]], 0.5, "m1", "r1", "2026-11-30T00:00:00+00:00", {})
    stored = stored.select(old.names[:-1]).append_column("run_date", io_date(len(stored)))
    write_deltalake(str(tmp_path / "t"), stored.cast(old), partition_by=["run_date"])
    before = run_query(str(tmp_path / "t"), "SELECT crack_count, cracks, mask_uri FROM results").to_pylist()
    assert before == [{"crack_count": None, "cracks": None, "mask_uri": None}]
    part = results.write_part(results.part_table({**images, "image_uri": ["/s/b.jpg"]}, [[]], 0.5, "m1", "r2",
                                                 "2026-12-01T00:00:00+00:00", {}), str(tmp_path / "t"), "r2",
                              "2026-12-01")
    results.commit(str(tmp_path / "t"), [part], "r2", {})
    names = {f.name for f in DeltaTable(str(tmp_path / "t")).schema().fields}
    assert set(schema.GEOMETRY_COLUMNS) <= names
    assert run_query(str(tmp_path / "t"), "SELECT count(*) FROM current WHERE crack_count IS NULL").column(0)[0] \
        .as_py() == 2


def io_date(n: int):
    import datetime

    import pyarrow as pa

    return pa.array([datetime.date(2026, 11, 30)] * n, pa.date32())


def test_evaluate_measures_masks_pixel_by_pixel_as_the_nightly_job_draws_them(survey, tmp_path, capsys):
    import shutil

    from cracknet.predict.evaluate import evaluate

    root, truth, model_dir = survey
    tree = tmp_path / "tree"
    shutil.copytree(root / "tree", tree)
    Image.fromarray(np.zeros((SIZE, SIZE + 4), np.uint8)).save(tree / "masks" / "photo-00.png")
    report = evaluate(str(model_dir), str(tree))
    assert report["unreadable"] == [{"uri": str(tree / "images" / "photo-00.png"),
                                     "error": f"its mask {tree / 'masks' / 'photo-00.png'} is {SIZE + 4}x{SIZE} "
                                              f"pixels and the image {SIZE}x{SIZE}; a mask must have the photo's size."}]
    masks = report["masks"]
    assert masks["images"] == 8 and masks["f1"] == pytest.approx(1.0) and masks["iou"] == pytest.approx(1.0)
    assert report["metrics"]["tp"] + report["metrics"]["fn"] == sum(1 for n, c in truth.items() if c and n != "photo-00")
    # A model whose crack head calls nothing draws nothing: its masks find none of the cracks.
    quiet = tmp_path / "quiet"
    save_artifact(str(quiet), dark_line_segmenter(crack_logit=-3.0).state_dict(), mask_card())
    assert cli_main(["evaluate", "--model", str(quiet), "--data", str(tree), "--record"]) in (0, None)
    out = capsys.readouterr().out
    assert "Crack masks (8 photos, pixels within 2 px): precision 0.000, recall 0.000, F1 0.000" in out
    card = json.loads((quiet / "model.json").read_text())
    assert card["evaluations"]["tree"]["masks"]["f1"] == 0.0


def test_a_photo_without_a_given_scale_takes_its_cameras_and_is_not_graded_where_that_is_too_coarse(
        ray_cluster, survey, tmp_path):
    """No manifest and no --mm-per-pixel: a nadir photo 1.5 cm above the surface gets the GSD of its camera (a 13.2 mm
    sensor, 8.8 mm lens, 96 px: 0.23 mm a pixel, fine enough to grade), an oblique one with a range finder 1.5 m
    away gets 23 mm a pixel, too coarse to tell the classes apart: millimetres, but no severity, and why."""
    root, truth, model_dir = survey
    cracked = [name for name, cracks in truth.items() if cracks][:2]
    flight = tmp_path / "flight"
    flight.mkdir()
    xmps = (dji_xmp(distance=None, RelativeAltitude="+0.015", GimbalPitchDegree="-90.0", GimbalYawDegree="30.0"),
            dji_xmp(distance="1.5", RelativeAltitude="+30.0", GimbalPitchDegree="-30.0", GimbalYawDegree="30.0"))
    for name, xmp in zip(cracked, xmps):
        photo = Image.open(root / "tree" / "images" / f"{name}.png").convert("RGB")
        (flight / f"{name}.jpg").write_bytes(jpeg(gps=DRONE_GPS, base=DRONE_BASE, details=DRONE_DETAILS, xmp=xmp,
                                                  image=photo))
    done = run_scoring(ScoreConfig(model=str(model_dir), input=str(flight), output=str(tmp_path / "results"),
                                   structure_from="gps:50"), log=lambda _: None)
    assert done["sites"] == {"placed": 2, "new_sites": 1}
    rows = sorted(run_query(str(tmp_path / "results"), "SELECT image_uri, mm_per_pixel, scale_source, scale_note, "
                                                       "severity, crack_length_mm, crack_count, structure "
                                                       "FROM images").to_pylist(),
                  key=lambda r: r["image_uri"])
    assert {r["structure"] for r in rows} == {"gps:47.37009,-8.53486"}  # DRONE_GPS, 47.370094 N 8.534861 W
    near, far = rows
    assert near["crack_count"] and far["crack_count"]
    assert near["mm_per_pixel"] == pytest.approx(13.2 * 15 / (8.8 * SIZE), rel=1e-5)
    assert near["scale_source"] == "camera: altitude, nadir" and near["scale_note"] is None
    assert near["severity"] is not None and near["crack_length_mm"] > 0
    assert far["mm_per_pixel"] == pytest.approx(13.2 * 1500 / (8.8 * SIZE), rel=1e-5)
    assert far["scale_source"] == "camera: range finder" and far["severity"] is None and far["crack_length_mm"] > 0
    assert "coarser than the insignificant bound of 0.3 mm" in far["scale_note"]
    # Exported: the nadir photo's cracks as lines on the ground within its footprint (SIZE px at 0.23 mm: 2 cm
    # across) around the photo's position; the oblique photo's as points at that position.
    geopandas, pyproj = pytest.importorskip("geopandas"), pytest.importorskip("pyproj")
    out = tmp_path / "findings.parquet"
    assert cli_main(["export", "--results", str(tmp_path / "results"), "--output", str(out)]) == 0
    frame = geopandas.read_parquet(out)
    at = (-(8 + 32 / 60 + 5.5 / 3600), 47 + 22 / 60 + 12.34 / 3600)  # DRONE_GPS: 47° 22' 12.34" N, 8° 32' 5.5" W
    near_rows, far_rows = (frame[frame.image_uri == r["image_uri"]] for r in (near, far))
    assert len(near_rows) == near["crack_count"] and len(far_rows) == far["crack_count"]
    assert set(near_rows.geometry.geom_type) == {"MultiLineString"} and set(near_rows.position_source) == {"crack"}
    assert set(far_rows.geometry.geom_type) == {"Point"} and set(far_rows.position_source) == {"photo"}
    assert all((p.x, p.y) == pytest.approx(at, abs=1e-9) for p in far_rows.geometry)
    geod = pyproj.Geod(ellps="WGS84")
    half_diagonal = SIZE * near["mm_per_pixel"] / 1000 / 2 ** 0.5
    for line in near_rows.geometry:
        for x, y in (xy for part in line.geoms for xy in part.coords):
            assert geod.inv(at[0], at[1], x, y)[2] <= half_diagonal * 1.01
