"""Crack geometry on drawn shapes of known length, width and angle."""

import math

import numpy as np
import pytest

from cracknet.errors import CracknetError
from cracknet.measure.geometry import (AASHTO_RC, DEFAULT_WIDTH_CLASSES, measure, parse_width_classes, severity_of,
                                       worst)


def bar(width: float, angle: float, length: float = 200, size: int = 400, offset: float = 0.37,
        centre: tuple[float, float] | None = None) -> np.ndarray:
    """Pixels whose centre lies within width/2 of a segment: a crack exactly ``width`` wide."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    cx, cy = centre if centre else (size / 2 + offset, size / 2 + offset)
    a = math.radians(angle)
    along = (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)
    across = -(xx - cx) * math.sin(a) + (yy - cy) * math.cos(a)
    return (np.abs(along) <= length / 2) & (np.abs(across) < width / 2)


def vertex_widths(crack: dict) -> list[float]:
    return [v["width_px"] for path in crack["paths"] for v in path]


@pytest.mark.parametrize("angle", [0, 10, 22.5, 40, 45, 55, 75, 90, 135])
@pytest.mark.parametrize("width", [2, 3, 5, 8, 10])
def test_a_straight_crack_measures_its_length_and_width(angle, width):
    (crack,) = measure(bar(width, angle))
    assert crack["length_px"] == pytest.approx(200, rel=0.03)
    assert abs(crack["width_mean_px"] - width) <= 0.7
    assert abs(crack["width_p95_px"] - width) <= 1.5
    assert abs(max(vertex_widths(crack)) - width) <= 1.5  # the vertices at the ends may be narrower
    assert crack["width_max_px"] >= crack["width_p95_px"]
    expected = "transverse" if angle % 180 < 30 or angle % 180 > 150 else \
        "longitudinal" if 60 < angle % 180 < 120 else "diagonal"
    assert crack["orientation"] == expected
    assert crack["junctions"] == 0 and len(crack["paths"]) == 1
    assert len(crack["paths"][0]) <= 6  # a straight line simplifies to its ends (and the hooks a skeleton makes there)


def test_the_bounding_box_and_the_polyline_are_in_photo_pixels():
    mask = np.zeros((120, 300), bool)
    mask[40:44, 50:251] = True  # 4 px wide, x 50..250
    (crack,) = measure(mask)
    assert crack["bbox"] == {"x": 50, "y": 40, "w": 201, "h": 4}
    xs = [v["x"] for v in crack["paths"][0]]
    ys = [v["y"] for v in crack["paths"][0]]
    assert min(xs) >= 50 and max(xs) <= 250 and all(40 <= y <= 43 for y in ys)
    assert crack["length_px"] == pytest.approx(201, abs=2)
    assert crack["area_px"] == 4 * 201


def test_a_curved_crack_measures_its_arc():
    yy, xx = np.mgrid[0:400, 0:400].astype(float)
    r = np.hypot(xx - 200.3, yy - 200.3)
    theta = np.degrees(np.arctan2(yy - 200.3, xx - 200.3))
    mask = (np.abs(r - 150) < 2.5) & (theta > 0) & (theta < 120)  # 5 px wide, a third of a circle
    (crack,) = measure(mask)
    assert crack["length_px"] == pytest.approx(150 * math.radians(120), rel=0.03)
    assert abs(crack["width_mean_px"] - 5) <= 0.7


def test_a_branching_crack_counts_its_junction_and_every_arm():
    mask = bar(4, 0, length=200, centre=(200.4, 200.4)) | bar(4, 90, length=100, centre=(200.4, 150.4))
    (crack,) = measure(mask)  # a T: 200 px across, 98 px up from it
    assert crack["junctions"] >= 1 and len(crack["paths"]) == 3
    assert crack["length_px"] == pytest.approx(200 + 98, rel=0.05)


def test_dense_branching_is_map_cracking():
    mask = np.zeros((300, 300), bool)
    for k in range(40, 280, 50):
        mask[k:k + 3, 20:280] = True
        mask[20:280, k:k + 3] = True
    (crack,) = measure(mask)
    assert crack["orientation"] == "map"
    assert crack["junctions"] >= 4


def test_cracks_apart_are_measured_apart_longest_first_and_specks_are_dropped():
    mask = bar(3, 0, length=120, centre=(150.4, 60.4)) | bar(6, 90, length=250, centre=(320.4, 200.4))
    mask[380:383, 10:13] = True  # a 3 x 3 speck
    cracks = measure(mask)
    assert [round(c["length_px"] / 10) for c in cracks] == [25, 12]
    assert measure(np.zeros((50, 50), bool)) == []


def test_millimetres_and_severity_follow_the_scale_and_are_never_guessed():
    (unscaled,) = measure(bar(6, 30))
    assert unscaled["length_mm"] is None and unscaled["width_p95_mm"] is None and unscaled["severity"] is None
    (scaled,) = measure(bar(6, 30), mm_per_pixel=0.1)
    assert scaled["length_mm"] == pytest.approx(scaled["length_px"] * 0.1)
    assert scaled["width_mean_mm"] == pytest.approx(scaled["width_mean_px"] * 0.1)
    assert scaled["severity"] == "moderate"  # about 0.6 mm: AASHTO's 0.3-1.25 mm band
    assert measure(bar(6, 30), mm_per_pixel=0.02)[0]["severity"] == "insignificant"
    assert measure(bar(6, 30), mm_per_pixel=0.5)[0]["severity"] == "wide"
    with pytest.raises(CracknetError, match="positive number of millimetres per pixel"):
        measure(bar(6, 30), mm_per_pixel=0)


def test_width_classes_parse_and_refuse_in_sentences():
    assert parse_width_classes(DEFAULT_WIDTH_CLASSES) == AASHTO_RC
    lanes = parse_width_classes("low:6,moderate:19,high")
    assert [severity_of(w, lanes) for w in (1, 6, 18.9, 40, None)] == ["low", "moderate", "moderate", "high", None]
    assert worst(["low", None, "high", "moderate"], lanes) == "high" and worst([None], lanes) is None
    for text, message in (("low:6,high:9", "no upper bound"), ("low,high", "needs an upper bound"),
                          ("low:6,mid:3,high", "must increase"), ("wide", "at least two"),
                          ("lo w:1,high", "not a class name")):
        with pytest.raises(CracknetError, match=message):
            parse_width_classes(text)


def test_a_crack_that_leaves_the_photo_keeps_its_width_at_the_edge():
    mask = np.zeros((100, 200), bool)
    mask[40:46, :120] = True  # 6 px wide, running out of the left edge
    (crack,) = measure(mask)
    assert crack["length_px"] == pytest.approx(120, abs=2)
    assert crack["width_p95_px"] == pytest.approx(6, abs=1)


def test_generated_mask_trees_hold_exact_masks_whose_geometry_matches_their_truth(tmp_path):
    import json

    from PIL import Image

    from cracknet.demo.synthetic import generate_masked

    written = generate_masked(str(tmp_path), photos=8, size=256, surface="asphalt", seed=3)
    assert len(written) == 8
    truth = json.loads((tmp_path / "cracks.json").read_text())
    errors = []
    for name, cracks in truth.items():
        image = Image.open(tmp_path / "images" / f"{name}.jpg")
        mask = np.asarray(Image.open(tmp_path / "masks" / f"{name}.png")) > 0
        assert image.size == (256, 256) and mask.shape == (256, 256)
        assert set(np.unique(np.asarray(Image.open(tmp_path / "masks" / f"{name}.png")))) <= {0, 255}
        measured = measure(mask)
        assert len(measured) == len(cracks)  # cracks never touch, and clean photos have empty masks
        for true, found in zip(sorted(cracks, key=lambda c: -c["length_px"]), measured):
            assert 2 <= true["width_px"] <= 10
            errors.append((abs(found["width_mean_px"] - true["width_px"]), found["length_px"] / true["length_px"] - 1))
    assert sum(not c for c in truth.values()) == 2 and errors
    assert np.median([w for w, _ in errors]) <= 1.0 and max(abs(length) for _, length in errors) <= 0.05


def soft_bar(width: float, angle: float, blur: float = 1.2) -> np.ndarray:
    """A model's probability map of a crack ``width`` px wide: the exact bar blurred (the soft edge a decoder
    draws)."""
    from scipy import ndimage

    return ndimage.gaussian_filter(bar(width, angle).astype(np.float64), blur)


@pytest.mark.parametrize("angle", [0, 30, 45, 80])
@pytest.mark.parametrize("width", [2, 3, 5])
def test_widths_read_from_a_stricter_cut_do_not_grow_with_a_low_mask_threshold(angle, width):
    probs = soft_bar(width, angle)
    (exact,) = measure(bar(width, angle))  # the drawn bar's own width (at 45 degrees the grid makes it wider)
    truth = exact["width_mean_px"]
    mask = probs >= 0.12  # a low cut finds the crack whole, and draws it wide
    (wide,) = measure(mask)
    (cut,) = measure(mask, width_mask=probs >= 0.5)
    assert wide["width_mean_px"] - truth >= 1.0
    assert abs(cut["width_mean_px"] - truth) <= 0.3 and abs(cut["width_p95_px"] - truth) <= 1.0
    assert cut["length_px"] == wide["length_px"]  # the course and length are the mask's


def test_the_width_cut_is_chosen_where_validation_widths_read_true():
    from cracknet.measure.geometry import choose_width_threshold, match_cracks

    pairs = [(soft_bar(w, a), bar(w, a)) for w, a in ((2, 10), (3, 50), (5, 80), (4, 120))]
    chosen = choose_width_threshold(pairs, threshold=0.15)
    assert chosen["cracks"] == 4 and chosen["width_error_px_at_mask_threshold"] >= 1.0
    assert 0.4 <= chosen["width_threshold"] <= 0.6 and abs(chosen["width_error_px"]) <= 0.3
    exact = choose_width_threshold([(b.astype(float), b) for _, b in pairs], threshold=0.5)
    assert exact["width_threshold"] == 0.5 and exact["width_error_px"] == pytest.approx(0, abs=0.05)
    assert choose_width_threshold([(np.zeros((50, 50)), np.zeros((50, 50), bool))], 0.5) == \
        {"width_threshold": 0.5, "cracks": 0}
    # A drawn crack far from the true one does not match it.
    (true,) = measure(bar(3, 0))
    (moved,) = measure(np.roll(bar(3, 0), 40, axis=0))
    assert match_cracks([true], [moved]) == [] and len(match_cracks([true], [true])) == 1
