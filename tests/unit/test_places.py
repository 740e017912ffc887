"""Where findings lie: the ``findings`` view's crack positions and lines against values computed by hand and by an
independent geodesic (pyproj's), and its fallbacks to the photo's position."""

from __future__ import annotations

import math

import pytest
from helpers import PLACED_AT, commit_photos, horizontal_crack
from helpers import placed_photo as photo

from cracknet.table.query import run_query

LAT, LON = PLACED_AT  # the photo's centre is pixel (50, 40)


def by_hand(dx_px: float, dy_px: float, yaw: float, mm: float) -> tuple[float, float]:
    """(latitude, longitude) of a pixel dx right and dy down of the photo's centre, on WGS 84's tangent plane."""
    east = (dx_px * math.cos(math.radians(yaw)) - dy_px * math.sin(math.radians(yaw))) * mm / 1000
    north = (-dx_px * math.sin(math.radians(yaw)) - dy_px * math.cos(math.radians(yaw))) * mm / 1000
    a, e2, phi = 6378137.0, 0.00669437999014, math.radians(LAT)
    meridian = a * (1 - e2) / (1 - e2 * math.sin(phi) ** 2) ** 1.5
    normal = a / math.sqrt(1 - e2 * math.sin(phi) ** 2)
    return LAT + math.degrees(north / meridian), LON + math.degrees(east / (normal * math.cos(phi)))


@pytest.mark.parametrize("yaw, east_m, north_m", [(90.0, 0.20, -0.25), (0.0, 0.25, 0.20), (180.0, -0.25, -0.20),
                                                  (-45.0, (0.25 - 0.20) / math.sqrt(2), (0.25 + 0.20) / math.sqrt(2))])
def test_a_crack_on_a_nadir_photo_lies_where_its_pixels_point_on_the_ground(tmp_path, yaw, east_m, north_m):
    # The crack's centre is 25 px right of and 20 px above the photo's centre, at 10 mm a pixel. Facing east
    # (yaw 90), above is east and right is south: 0.20 m east, 0.25 m south.
    pyproj = pytest.importorskip("pyproj")
    output = str(tmp_path / "results")
    commit_photos(output, [photo(yaw=yaw)], [horizontal_crack()], [0.9])
    row = run_query(output, "SELECT * FROM findings").to_pylist()
    assert len(row) == 1 and row[0]["position_source"] == "crack" and row[0]["crack"] == 0
    lat, lon = by_hand(25.0, -20.0, yaw, 10.0)
    assert row[0]["latitude"] == pytest.approx(lat, abs=1e-11) and row[0]["longitude"] == pytest.approx(lon, abs=1e-11)
    # An independent geodesic: from the photo's position, along the bearing, the distance on the ground.
    azimuth = math.degrees(math.atan2(east_m, north_m))
    lon2, lat2, _ = pyproj.Geod(ellps="WGS84").fwd(LON, LAT, azimuth, math.hypot(east_m, north_m))
    assert row[0]["latitude"] == pytest.approx(lat2, abs=1e-8) and row[0]["longitude"] == pytest.approx(lon2, abs=1e-8)
    # Its line: each vertex of the crack's centre line (photo pixels) carried the same way
    pixels = horizontal_crack()[0]["paths"]
    assert [len(path) for path in row[0]["line"]] == [len(path) for path in pixels]
    for got, vertex in zip(row[0]["line"][0], pixels[0]):
        want_lat, want_lon = by_hand(vertex["x"] - 50.0, vertex["y"] - 40.0, yaw, 10.0)
        assert got["latitude"] == pytest.approx(want_lat, abs=1e-11)
        assert got["longitude"] == pytest.approx(want_lon, abs=1e-11)


def test_without_a_ground_frame_a_finding_takes_the_photos_position_or_none(tmp_path):
    output = str(tmp_path / "results")
    crack = horizontal_crack()
    # 0: at an angle (pitch -45); 1: no heading; 2: no position; 3: cracked, no crack drawn; 4: not cracked
    commit_photos(output, [photo(pitch=-45.0), photo(yaw=None), photo(lat=None), photo(), photo()],
           [crack, crack, crack, [], []], [0.9, 0.9, 0.9, 0.8, 0.1])
    rows = {r["image_uri"].rsplit("/", 1)[1]: r for r in
            run_query(output, "SELECT * FROM findings").to_pylist()}
    assert sorted(rows) == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    for name in ("0.jpg", "1.jpg", "3.jpg"):
        assert (rows[name]["latitude"], rows[name]["longitude"], rows[name]["position_source"]) == (LAT, LON, "photo")
        assert rows[name]["line"] is None
    assert rows["2.jpg"]["latitude"] is None and rows["2.jpg"]["position_source"] is None
    assert rows["3.jpg"]["crack"] is None and rows["3.jpg"]["structure"] == "s3://survey/deck"


def test_a_photo_without_a_scale_is_placed_at_its_own_position(tmp_path):
    output = str(tmp_path / "results")
    commit_photos(output, [photo()], [horizontal_crack()], [0.9], mm=None)
    row = run_query(output, "SELECT latitude, longitude, position_source, line FROM findings").to_pylist()
    assert row == [{"latitude": LAT, "longitude": LON, "position_source": "photo", "line": None}]
