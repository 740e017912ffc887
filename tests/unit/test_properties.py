"""Property-based tests: generated keys, numbers and manifest cells against the invariants that must always hold.

Nothing derived from an input key lands outside its location, and no two images share a derived name; every number
a command or a manifest takes is finite and in range, or refused with a sentence; one bad manifest cell costs one
row. The examples are bounded (200 a test) so that the suite stays within its budget; a longer search:

    CRACKNET_EXAMPLES=5000 .venv/bin/python -m pytest tests/unit/test_properties.py
"""

import dataclasses
import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from cracknet import storage
from cracknet.errors import CracknetError
from cracknet.numbers import MM_PER_PIXEL, numeric_kind
from cracknet.score import inputs
from cracknet.score.config import ScoreConfig
from cracknet.table.results import mask_name
from cracknet.train.config import TrainConfig

BOUNDED = settings(max_examples=int(os.environ.get("CRACKNET_EXAMPLES", "200")), deadline=None, database=None,  # nothing written into the project
                   suppress_health_check=[HealthCheck.function_scoped_fixture])

# Key segments as messy buckets hold them: empty (a//b), dots, unicode, case twins, control characters, slashes.
SEGMENT = st.one_of(st.sampled_from(["", ".", "..", "x.jpg", "x.JPG", "tmp", "etc", "é ü 漢字", "a\x1b[31m", "\\"]),
                    st.text(min_size=1, max_size=12))
KEY = st.lists(SEGMENT, min_size=1, max_size=8).map("/".join)


@BOUNDED
@given(key=KEY, version=st.text(max_size=8), s3_masks=st.booleans())
def test_a_mask_derived_from_any_key_stays_inside_the_masks_location(tmp_path, key, version, s3_masks):
    uri = f"s3://survey/night/{key}"
    masks = "s3://results/_masks" if s3_masks else str(tmp_path / "masks")
    written = storage.join(masks, mask_name(uri, version, "s3://survey/night"))
    if s3_masks:
        below = written[len(masks) + 1:]
        assert written.startswith(masks + "/") and all(s not in ("", ".", "..") for s in below.split("/"))
    else:
        assert storage.within(written, masks) and os.path.realpath(written) != os.path.realpath(masks)
    assert written.endswith(".png")


@BOUNDED
@given(a=KEY, b=KEY, version=st.sampled_from(["", "1-2", "etag"]))
def test_two_keys_never_share_a_mask(a, b, version):
    root = "s3://survey/night"
    if a != b:
        assert mask_name(f"{root}/{a}", version, root) != mask_name(f"{root}/{b}", version, root)
    assert mask_name(f"{root}/{a}", "v1", root) != mask_name(f"{root}/{a}", "v2", root)


def test_the_keys_the_review_found():
    root, masks = "s3://survey/night", "/data/masks"
    escaped = storage.join(masks, mask_name(f"{root}//tmp/x/escaped/evil.jpg", "v", root))
    assert escaped.startswith(masks + "/tmp/x/escaped/evil.") and storage.within(escaped, masks)
    assert mask_name(f"{root}/x.jpg", "10-5", root) != mask_name(f"{root}/x.JPG", "10-5", root)
    with pytest.raises(CracknetError, match="has a '.' or '..' segment"):
        storage.join(masks, "../outside.png")
    assert storage.join("s3://b/p", "/abs/part") == "s3://b/p/abs/part"  # join never drops its base
    with pytest.raises(CracknetError, match=r"s3://bucket//prefix has an empty path segment \(//\); write it as "
                                            r"s3://bucket/prefix"):
        storage.resolve("s3://bucket//prefix")


NASTY = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 1e-45, 1e39, 1e308, 2**63]),
                  st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**70, 2**70))
REQUIRED = {TrainConfig: {"data": "d", "output": "o"}, ScoreConfig: {"model": "m", "input": "i", "output": "o"}}


def numeric_fields(cls):
    from typing import get_type_hints

    hints = get_type_hints(cls)
    return [f for f in dataclasses.fields(cls) if numeric_kind(hints[f.name]) is not None]


@pytest.mark.parametrize("cls", [TrainConfig, ScoreConfig], ids=lambda c: c.__name__)
@BOUNDED
@given(data=st.data())
def test_every_number_of_every_config_is_finite_and_in_range_or_refused_with_a_sentence(cls, data):
    field = data.draw(st.sampled_from(numeric_fields(cls)))
    value = data.draw(NASTY)
    try:
        made = cls(**REQUIRED[cls], **{field.name: value})
    except CracknetError as exc:
        message = str(exc)
        assert "\n" not in message and message.endswith(".") and "--" in message
        return
    number = getattr(made, field.name)
    assert math.isfinite(number) and number in field.metadata["range"]


@pytest.mark.parametrize("field", numeric_fields(ScoreConfig) + numeric_fields(TrainConfig), ids=lambda f: f.name)
def test_every_numeric_setting_declares_its_range(field):
    assert "range" in field.metadata  # a new setting is checked like the others


CELL = st.one_of(st.none(), st.sampled_from(["", " ", "nan", "NaN", "inf", "-inf", "1e39", "1e-45", "0", "-1", "abc",
                                             "0.2", "5"]),
                 st.floats(allow_nan=True, allow_infinity=True).map(repr))


@BOUNDED
@given(cells=st.lists(CELL, min_size=1, max_size=12), parquet=st.booleans())
def test_one_bad_manifest_cell_costs_one_row(tmp_path, cells, parquet):
    names = [f"/survey/photo-{i}.jpg" for i in range(len(cells))]
    path = tmp_path / ("tonight.parquet" if parquet else "tonight.csv")
    if parquet:  # a float column where every cell reads as a number; else text
        try:
            values = pa.array([None if c is None or not c.strip() else float(c) for c in cells], pa.float64())
        except ValueError:
            values = pa.array(cells, pa.string())
        pq.write_table(pa.table({"image_uri": names, "mm_per_pixel": values}), path)
    else:
        path.write_text("image_uri,mm_per_pixel\n" + "".join(f"{n},{c or ''}\n" for n, c in zip(names, cells)))
    rows = inputs.listing(str(path), str(tmp_path)).read_all().to_pylist()
    assert [r["image_uri"] for r in rows] == names  # every row kept, in order
    for cell, row in zip(cells, rows):
        empty = cell is None or not cell.strip()
        if row["listing_error"] is None:
            assert row["mm_per_pixel"] is None if empty else row["mm_per_pixel"] in MM_PER_PIXEL
        else:
            assert not empty and row["mm_per_pixel"] is None and row["listing_error"].startswith("The manifest's")
            assert "\n" not in row["listing_error"]


@pytest.mark.parametrize("threshold", [math.nan, math.inf, -0.1, 1.5, None])
def test_a_model_whose_deciding_numbers_are_not_finite_is_neither_saved_nor_loaded(tmp_path, threshold):
    import json

    import torch
    from conftest import model_card

    from cracknet.model.card import read_card
    from cracknet.model.network import save_artifact

    weights = {"w": torch.zeros(1)}
    with pytest.raises(CracknetError, match=r"The model's threshold is .*, so it was not saved: training did not "
                                            r"converge"):
        save_artifact(str(tmp_path / "diverged"), weights, model_card(threshold=threshold))
    assert not (tmp_path / "diverged").exists()  # nothing written
    save_artifact(str(tmp_path / "model"), weights, model_card())
    card = tmp_path / "model" / "model.json"
    card.write_text(card.read_text().replace('"threshold": 0.5', f'"threshold": {json.dumps(threshold)}'
                                             if threshold is None or math.isfinite(threshold) else '"threshold": NaN'))
    with pytest.raises(CracknetError, match="is not a usable model card: its threshold is"):
        read_card(str(tmp_path / "model"))
