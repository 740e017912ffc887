"""The demo behind `make demo`: train, score a small survey, and write the report, all on a local Ray.

    cracknet demo [--data ../shared/data/metu-dev] [--output runs/demo]

1. Train on the labelled tree (the METU dev set when present, else a generated one).
2. Build a small "survey" under <output>/survey: labelled patches the run held out for its test,
   spread over two structures, and two large photos stitched from patches so scoring tiles them.
3. Score the survey with `run_scoring` and write <output>/report/report.html with every section.
4. Crack geometry: adapt the model into one that also draws crack masks, with 80 generated photos and
   their exact masks; score a survey of larger generated photos (tiled, 0.2 mm per pixel) into
   <output>/geometry-results with their masks, and write <output>/geometry-report/report.html.
5. With --adapt: the model meets a surface it never saw (generated asphalt, 400 held-out tiles);
   measure it there, adapt it with 300 labelled tiles (`--base-model`), measure again. Both rows go
   into the models' cards (``evaluations``).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from cracknet import storage
from cracknet.config import option
from cracknet.data.trees import discover
from cracknet.model.card import in_split
from cracknet.numbers import Range, check_fields
from cracknet.score.config import ScoreConfig
from cracknet.storage import content_hash
from cracknet.train.config import TrainConfig

STRUCTURES = ("bridge-north-deck", "tunnel-east-lining")
NEW_SURFACE = "asphalt (generated, held out)"


def build_survey(data: str, survey: str, card: dict, per_structure: int = 100, seed: int = 0) -> None:
    """Copy held-out test images into two structure folders and add two stitched large photos."""
    in_test = in_split(card, "test", data)
    held_out = []
    for image in discover(data):
        raw = storage.read_bytes(image.uri)
        if in_test(image.uri, content_hash(raw)):
            held_out.append((image, raw))
    # Both classes mixed, in a fixed order.
    held_out = [held_out[i] for i in np.random.default_rng(seed).permutation(len(held_out))]
    for n, (image, raw) in enumerate(held_out[:2 * per_structure]):
        name = image.uri.replace("\\", "/").rsplit("/", 1)[-1]
        storage.write_bytes(storage.join(survey, STRUCTURES[n % 2], f"{n:04d}-{name}"), raw)
    # Two large "survey photos" stitched from 4 x 4 patches, some of them cracked.
    from cracknet.images.decoding import load_rgb

    patches = [load_rgb(raw) for _, raw in held_out[:32]]
    side = max(p.width for p in patches)
    for k in range(2):
        mosaic = Image.new("RGB", (4 * side, 4 * side))
        for j, patch in enumerate(patches[16 * k:16 * k + 16]):
            mosaic.paste(patch.resize((side, side)), ((j % 4) * side, (j // 4) * side))
        buffer = io.BytesIO()
        mosaic.save(buffer, format="JPEG", quality=90)
        storage.write_bytes(storage.join(survey, STRUCTURES[k], f"survey-photo-{k + 1}.jpg"), buffer.getvalue())


DEV_DATA = os.path.join("..", "shared", "data", "metu-dev")


@dataclass(frozen=True)
class DemoConfig:
    """``cracknet demo``: train, score a small survey and write the report, on a local Ray."""
    data: str = option(DEV_DATA, f"labelled tree (default: {DEV_DATA}, else generated)")
    output: str = option(os.path.join("runs", "demo"), "where the model, the survey, the results and the reports go")
    epochs: int = option(3, "training epochs", range=Range(1, 1000))
    image_size: int = option(64, "the model's input side in pixels", range=Range(16, 1024))
    adapt: bool = option(False, "then adapt the model to a surface it never saw (generated asphalt) and measure both")
    verbose: bool = option(False, "also show Ray's INFO logs and Ray Data's progress bars")

    def __post_init__(self):
        check_fields(self)


def run_demo(data: str, output: str, epochs: int, image_size: int, say: Callable[[str], None] = print,
             verbose: bool = False) -> dict:
    from cracknet.demo.synthetic import generate
    from cracknet.report.build import build_report
    from cracknet.score.driver import run_scoring
    from cracknet.train.driver import run_training

    if not storage.exists(data):
        generated = storage.join(output, "synthetic-data")
        say(f"{data} is not here; generating a synthetic crack set under {generated}.")
        if not storage.exists(generated):
            generate(generated, per_class=300, size=96)
        data = generated
    cfg = TrainConfig(data=data, output=output, epochs=epochs, image_size=image_size, batch_size=32, num_workers=2,
                      weights="none", overwrite=True, verbose=verbose)
    card = run_training(cfg, log=say)
    survey, results = storage.join(output, "survey"), storage.join(output, "results")
    storage.delete_tree(survey)
    storage.delete_tree(results)
    build_survey(data, survey, card)
    scored = run_scoring(ScoreConfig(model=card["folder"], input=survey, output=results, verbose=verbose), log=say)
    written = build_report(card["folder"], storage.join(output, "report"), data=data, split="test",
                           results=results)
    return {"card": card, "scoring": scored, **written}


def masks_demo(base: dict, output: str, epochs: int = 8, photos: int = 80, size: int = 128,
               say: Callable[[str], None] = print, verbose: bool = False) -> dict:
    """Step 4: a mask model adapted from ``base`` on generated photos with exact masks, a survey scored with crack
    geometry, and its report. Returns the mask model's card, the scoring summary, the report and the cracks."""
    from cracknet.demo.flight import geotag
    from cracknet.demo.synthetic import generate_masked
    from cracknet.report.build import build_report
    from cracknet.score.driver import run_scoring
    from cracknet.table.export import ExportConfig, export
    from cracknet.table.query import run_query
    from cracknet.train.driver import run_training

    tree, survey = storage.join(output, "masks"), storage.join(output, "masks-survey")
    results = storage.join(output, "geometry-results")
    for folder in (tree, survey, results):
        storage.delete_tree(folder)
    generate_masked(tree, photos=photos, size=size, seed=1)
    generate_masked(survey, photos=16, size=2 * size, seed=2)  # larger photos: scored in tiles, stitched
    geotag(storage.join(survey, "images"))  # as a drone flight along a deck tags them: cracks land on the map
    say(f"Crack masks: adapting {base['folder']} with {photos} generated photos and their exact masks under {tree}.")
    card = run_training(TrainConfig(data=tree, output=storage.join(output, "masks-model"), base_model=base["folder"],
                                    epochs=epochs, image_size=size, batch_size=8, num_workers=2, overwrite=True,
                                    val_fraction=0.2, test_fraction=0.2, verbose=verbose), log=say)
    scored = run_scoring(ScoreConfig(model=card["folder"], input=storage.join(survey, "images"), output=results,
                                     mm_per_pixel=0.2, masks=storage.join(results, "_masks"),
                                     structure_from="gps:100", verbose=verbose), log=say)
    written = build_report(card["folder"], storage.join(output, "geometry-report"), data=survey, results=results)
    exported = export(ExportConfig(results=results, output=storage.join(output, "findings.geojson"),
                                   format="geojson"))
    cracks = run_query(results, "SELECT severity, count(*) AS cracks, round(sum(length_mm)) AS length_mm, "
                                "round(max(width_p95_mm), 2) AS widest_mm FROM cracks GROUP BY 1 ORDER BY 1").to_pylist()
    return {"card": card, "scoring": scored, "cracks": cracks, "exported": exported, **written}


def adapt_demo(base: dict, output: str, epochs: int = 16, image_size: int = 128, per_class: tuple = (150, 200),
               batch_size: int = 16, say: Callable[[str], None] = print, verbose: bool = False) -> dict:
    """Step 4: measure ``base`` on generated asphalt, adapt it with labelled tiles of it, measure again.

    ``per_class``: labelled tiles per class to adapt on, and held-out tiles per class to measure on.
    ``batch_size`` per worker: small, so that some 200 training tiles still make several steps an epoch.
    Returns the adapted model's card and the two evaluation reports.
    """
    from cracknet.demo.synthetic import adaptation_sets
    from cracknet.model.card import record_evaluations
    from cracknet.predict.evaluate import evaluate, surface_row
    from cracknet.train.driver import run_training

    labelled, holdout = storage.join(output, "asphalt"), storage.join(output, "asphalt-holdout")
    storage.delete_tree(labelled)
    storage.delete_tree(holdout)
    adaptation_sets(labelled, holdout, per_class)
    before = evaluate(base["folder"], holdout)
    record_evaluations(base["folder"], {NEW_SURFACE: surface_row(before)})
    say(f"A surface the model never saw, {holdout} (generated asphalt): {verdict(before)}. "
        f"Adapting it with {2 * per_class[0]} labelled tiles under {labelled}.")
    cfg = TrainConfig(data=labelled, output=storage.join(output, "adapted"), base_model=base["folder"],
                      epochs=epochs, image_size=image_size, batch_size=batch_size, num_workers=2, overwrite=True,
                      verbose=verbose)
    card = run_training(cfg, log=say)
    after = evaluate(card["folder"], holdout)
    record_evaluations(card["folder"], {NEW_SURFACE: surface_row(after)})
    return {"card": card, "before": before, "after": after}


def verdict(report: dict) -> str:
    """One evaluation report in a line: at the model's threshold, and at 0.5."""
    m, half = report["metrics"], report["metrics_at_0.5"]
    return (f"accuracy {m['accuracy']:.3f}, recall {m['recall']:.3f} at its threshold {report['threshold']:.3f} "
            f"(at 0.5: accuracy {half['accuracy']:.3f}, recall {half['recall']:.3f})")
