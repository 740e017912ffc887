"""``cracknet export``: GeoParquet, GeoJSON and CSV read back by independent readers (GeoPandas for GeoParquet,
GDAL through pyogrio for GeoJSON, shapely's WKT parser for CSV), with their coordinates, CRS and attributes."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pyarrow.parquet as pq
import pytest
from helpers import DAY, PLACED_AT, commit_photos, horizontal_crack
from helpers import placed_photo as photo

from cracknet.cli import main as cli_main
from cracknet.errors import CracknetError
from cracknet.table.export import ExportConfig, export
from cracknet.table.query import run_query

geopandas = pytest.importorskip("geopandas")
shapely = pytest.importorskip("shapely")
pyogrio = pytest.importorskip("pyogrio")


@pytest.fixture()
def survey(tmp_path) -> str:
    """Two nights. Night one, deck: 0 a crack placed on the ground, 1 a crack on an oblique photo (at the photo's
    position), 2 cracked with no crack drawn, 3 not cracked, 4 a crack on a photo with no position. Night two,
    pier: a crack 1 px wide at 0.1 mm a pixel (insignificant), one 3 px wide at 0.4 (moderate)."""
    output = str(tmp_path / "results")
    wide = horizontal_crack()
    commit_photos(output, [photo(), photo(pitch=-45.0), photo(), photo(), photo(lat=None)],
                  [wide, wide, [], [], wide], [0.9, 0.9, 0.8, 0.1, 0.9])
    commit_photos(output, [photo(), photo()], [horizontal_crack(width=1, mm_per_pixel=0.1), horizontal_crack(mm_per_pixel=0.4)],
                  [0.9, 0.9], mm=None, uris=["s3://survey/pier/a.jpg", "s3://survey/pier/b.jpg"], run_id="run-2",
                  when=DAY + timedelta(days=2))
    return output


def test_geoparquet_opens_in_geopandas_with_lines_points_crs_and_attributes(survey, tmp_path):
    out = str(tmp_path / "exports" / "findings.parquet")
    done = export(ExportConfig(results=survey, output=out, format="geoparquet"))
    assert (done["rows"], done["on_ground"], done["lines"], done["at_photo"], done["unplaced"]) == (6, 1, 1, 4, 1)
    frame = geopandas.read_parquet(out)
    assert frame.crs.to_string() == "OGC:CRS84" and frame.geometry.name == "geometry"
    assert list(frame.image_uri) == ["s3://survey/deck/0.jpg", "s3://survey/deck/1.jpg", "s3://survey/deck/2.jpg",
                                     "s3://survey/deck/4.jpg", "s3://survey/pier/a.jpg", "s3://survey/pier/b.jpg"]
    findings = run_query(survey, "SELECT * FROM findings WHERE image_uri LIKE '%deck/0.jpg'").to_pylist()[0]
    line = frame.geometry.iloc[0]
    assert line.geom_type == "MultiLineString"
    expected = [(v["longitude"], v["latitude"]) for v in findings["line"][0]]
    assert list(line.geoms[0].coords) == expected  # WKB keeps every bit
    assert frame.kind.tolist()[:3] == ["crack", "crack", "cracked image"]
    for i in (1, 2):  # at the photo's position (x = longitude)
        assert (frame.geometry.iloc[i].geom_type, frame.geometry.iloc[i].x, frame.geometry.iloc[i].y) == \
            ("Point", PLACED_AT[1], PLACED_AT[0])
    assert frame.geometry.iloc[3] is None and frame.position_source.isna().iloc[3]
    assert frame.severity.tolist()[-2:] == ["insignificant", "moderate"] and frame.crack.isna().tolist()[:3] == \
        [False, False, True]
    geo = json.loads(pq.read_schema(out).metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["columns"]["geometry"]["encoding"] == "WKB"
    assert geo["columns"]["geometry"]["geometry_types"] == ["MultiLineString", "Point"]
    assert geo["columns"]["geometry"]["bbox"] == pytest.approx(list(frame.total_bounds), abs=1e-12)


def test_geojson_opens_in_gdal_with_the_same_positions(survey, tmp_path):
    out = str(tmp_path / "findings.geojson")
    export(ExportConfig(results=survey, output=out, format="geojson"))
    frame = pyogrio.read_dataframe(out)
    assert frame.crs.to_epsg() == 4326 and len(frame) == 6
    assert pyogrio.read_info(out)["driver"] == "GeoJSON"
    assert frame.geometry.iloc[0].geom_type == "MultiLineString" and frame.geometry.iloc[1].geom_type == "Point"
    assert (frame.geometry.iloc[1].x, frame.geometry.iloc[1].y) == (PLACED_AT[1], PLACED_AT[0])
    assert frame.image_uri.iloc[0] == "s3://survey/deck/0.jpg" and frame.kind.iloc[2] == "cracked image"


def test_csv_carries_wkt_and_filters_select_by_day_structure_and_severity(survey, tmp_path):
    out = str(tmp_path / "pier.csv")
    assert cli_main(["export", "--results", survey, "--output", out, "--format", "csv", "--since",
                     (DAY + timedelta(days=1)).date().isoformat(), "--min-severity", "moderate"]) == 0
    rows = list(csv.DictReader(io.StringIO(open(out).read())))
    assert [r["image_uri"] for r in rows] == ["s3://survey/pier/b.jpg"]
    assert shapely.from_wkt(rows[0]["geometry_wkt"]).equals(shapely.Point(PLACED_AT[1], PLACED_AT[0]))
    out = str(tmp_path / "deck.geojson")
    assert cli_main(["export", "--results", survey, "--output", out, "--format", "geojson", "--structure", "deck",
                     "--all-images"]) == 0
    frame = pyogrio.read_dataframe(out)
    assert sorted(frame.image_uri.str.rsplit("/", n=1).str[1]) == ["0.jpg", "1.jpg", "2.jpg", "3.jpg", "4.jpg"]
    assert frame.loc[frame.image_uri.str.endswith("3.jpg"), "kind"].tolist() == ["image"]


def test_bad_filters_and_an_output_inside_the_table_are_refused_with_a_sentence(survey, capsys):
    with pytest.raises(CracknetError, match="not one of the width classes"):
        ExportConfig(results=survey, output="/tmp/x.parquet", min_severity="severe")
    with pytest.raises(CracknetError, match="not a day"):
        ExportConfig(results=survey, output="/tmp/x.parquet", since="Monday")
    assert cli_main(["export", "--results", survey, "--output", f"{survey}/findings.parquet"]) == 2
    assert "lies inside the results table" in capsys.readouterr().err
