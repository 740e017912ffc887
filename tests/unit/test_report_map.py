"""The report's map: photos and findings drawn where they lie, offline, with the structures' list linking to each
structure's findings."""

from __future__ import annotations

import re

import pytest
from helpers import DAY, PLACED_AT, commit_photos, commit_run, horizontal_crack
from helpers import placed_photo as photo

from cracknet.report.page import Report
from cracknet.report.places import places_section, projection


def test_the_map_draws_lines_and_dots_by_severity_and_links_each_structure(tmp_path):
    output = str(tmp_path / "results")
    commit_photos(output, [photo(), photo(pitch=-45.0), photo(), photo(lat=None)],
                  [horizontal_crack(), horizontal_crack(), [], []], [0.9, 0.9, 0.1, 0.9],
                  uris=["s3://s/deck/0.jpg", "s3://s/deck/1.jpg", "s3://s/pier/2.jpg", "s3://s/pier/3.jpg"])
    report = Report(str(tmp_path / "report"), "map")
    places_section(report, output)
    page = open(report.write()).read()
    assert "Where on the structure" in page and "3 photos with a position" in page
    assert re.findall(r'<a href="#where-(\d)">s3://s/(\w+)</a>', page) == [("0", "deck"), ("1", "pier")]
    assert re.findall(r'<h3 id="where-(\d)">', page) == ["0", "1"]
    # The survey's map and deck's: the placed crack as a line, the oblique photo's as a dot, both "wide" (red);
    # 3 grey photo dots on the survey's map, 2 on deck's, 1 on pier's.
    maps = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(maps) == 3
    assert [m.count('stroke="#c0392b"') for m in maps] == [1, 1, 0]
    assert [m.count('fill="#c0392b"') for m in maps] == [2, 2, 0]  # a dot at each finding, lines too
    assert [m.count('fill="#95a5a6"') for m in maps] == [3, 2, 1]
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page


def test_without_positions_the_section_says_so(tmp_path):
    output = str(tmp_path / "results")
    commit_run(output, ["/s/a.jpg"], when=DAY)
    report = Report(str(tmp_path / "report"), "map")
    places_section(report, output)
    assert "No scored photo states where it was taken" in report.sections[0]


def test_the_projection_keeps_north_up_and_metres_equal_both_ways():
    lat, lon = PLACED_AT
    east = 10 / (111_320 * 0.6819983600624985)  # 10 m east at 47 degrees north
    to_xy, px_per_m = projection([(lon, lat), (lon + east, lat), (lon, lat + 10 / 111_320)], 400, 400, margin=0)
    (x0, y0), (x1, y1), (x2, y2) = to_xy(lon, lat), to_xy(lon + east, lat), to_xy(lon, lat + 10 / 111_320)
    assert px_per_m == pytest.approx(40.0)
    assert (x1 - x0, y1 - y0) == pytest.approx((400.0, 0.0), abs=1e-3)  # cos taken at the middle latitude
    assert (x2 - x0, y2 - y0) == pytest.approx((0.0, -400.0), abs=1e-3)
