"""Structures from positions (``--structure-from gps:RADIUS_M``): sites drawn where photos cluster, kept from night
to night, and the views that group by them."""

from __future__ import annotations

import math
import random
from datetime import timedelta

import pytest
from helpers import DAY, commit_photos, horizontal_crack
from helpers import placed_photo as photo

from cracknet.errors import CracknetError
from cracknet.table import sites
from cracknet.table.compact import compact
from cracknet.table.query import run_query

METRE = 1 / 111_195  # a metre of latitude, in degrees (the haversine's mean radius)


def test_photos_within_the_radius_share_a_site_in_any_order():
    # Two bridges 1 km apart, photos every 10 m along 60 m of each; a radius of 50 m.
    photos = [(f"a/{i}.jpg", 47.0 + 10 * i * METRE, 8.0) for i in range(7)]
    photos += [(f"b/{i}.jpg", 47.0 + (1000 + 10 * i) * METRE, 8.0) for i in range(7)]
    pairs, made = sites.assign(photos, [], 50.0, "run-1")
    shuffled = photos[:]
    random.Random(1).shuffle(shuffled)
    assert sites.assign(shuffled, [], 50.0, "run-1") == (pairs, made)
    assert len(made) == 2 and {s for _, s in pairs} == {m.structure for m in made}
    by_bridge = {b: {s for u, s in pairs if u.startswith(b)} for b in "ab"}
    assert all(len(v) == 1 for v in by_bridge.values()) and by_bridge["a"] != by_bridge["b"]
    # Each site sits at its photos' middle (30 m along), and is named by its position.
    a = next(m for m in made if m.structure in by_bridge["a"])
    assert sites.distances_m([a.latitude], [a.longitude], 47.0 + 30 * METRE, 8.0)[0] < 0.01
    assert a.structure == f"gps:{a.latitude:.5f},{a.longitude:.5f}"


def test_haversine_distances_match_a_known_case():
    # One degree of longitude on the equator, on a sphere of the mean radius.
    assert sites.distances_m([0.0], [1.0], 0.0, 0.0)[0] == pytest.approx(2 * math.pi * 6_371_008.8 / 360, rel=1e-12)


@pytest.mark.parametrize("text", ["gps", "gps:", "gps:0", "gps:-5", "gps:nan", "gps:20000", "position:50", "folders"])
def test_a_bad_structure_from_is_a_sentence(text):
    with pytest.raises(CracknetError, match="give folder, or gps:RADIUS_M"):
        sites.parse_structure_from(text)


def test_sites_stay_put_from_night_to_night_and_group_the_views(tmp_path):
    output = str(tmp_path / "results")
    near = photo()  # every photo of night one at PLACED_AT, in two folders
    commit_photos(output, [near, near, near], [horizontal_crack(), [], []], [0.9, 0.2, 0.2],
                  uris=["s3://flight/1/a.jpg", "s3://flight/1/b.jpg", "s3://flight/2/c.jpg"])
    unplaced = run_query(output, sites.unplaced_sql()).to_pylist()
    assert sites.place_new(output, 50.0, "run-1", [(p["image_uri"], p["latitude"], p["longitude"])
                                                   for p in unplaced]) == {"placed": 3, "new_sites": 1}
    site = "gps:47.00000,8.00000"
    assert run_query(output, "SELECT structure, images, cracks FROM structures").to_pylist() == \
        [{"structure": site, "images": 3, "cracks": 1}]
    assert set(run_query(output, "SELECT structure FROM findings").column(0).to_pylist()) == {site}
    # Night two: a photo 30 m north joins the site; one 2 km north seeds a new one; a photo with no position keeps
    # its folder; night one's photos are not placed again.
    north = photo(lat=47.0 + 30 * METRE)
    far = photo(lat=47.0 + 2000 * METRE)
    commit_photos(output, [north, far, photo(lat=None)], [[], [], []], [0.2, 0.2, 0.2], run_id="run-2",
                  uris=["s3://flight/3/d.jpg", "s3://flight/3/e.jpg", "s3://flight/3/f.jpg"],
                  when=DAY + timedelta(days=1))
    unplaced = run_query(output, sites.unplaced_sql()).to_pylist()
    assert sorted(p["image_uri"] for p in unplaced) == ["s3://flight/3/d.jpg", "s3://flight/3/e.jpg"]
    assert sites.place_new(output, 50.0, "run-2", [(p["image_uri"], p["latitude"], p["longitude"])
                                                   for p in unplaced]) == {"placed": 2, "new_sites": 1}
    structure = {r["image_uri"]: r["structure"] for r in run_query(output, "SELECT * FROM current").to_pylist()}
    assert structure["s3://flight/3/d.jpg"] == site and structure["s3://flight/1/a.jpg"] == site
    assert structure["s3://flight/3/e.jpg"] == f"gps:{47.0 + 2000 * METRE:.5f},8.00000"
    assert structure["s3://flight/3/f.jpg"] == "s3://flight/3"
    # Another radius is refused; compaction keeps the sites.
    with pytest.raises(CracknetError, match="differs from the 50 m the sites"):
        sites.check_radius(output, 25.0)
    sites.check_radius(output, 50.0)
    compact(output, 0, 60.0)
    assert len(sites.read_sites(output)[1]) == 2 and len(sites.assigned_files(output)) == 2
