"""A general crack base model from all the crack data at hand: what to adapt from when there is no better model.

    .venv/bin/python bench/base_model.py                      # runs/base: METU dev patches + both generated surfaces
    .venv/bin/python bench/base_model.py --epochs 12 --image-size 96 --output s3://models/base

Builds one labelled tree (links, not copies) of the METU concrete patches
(../shared/data/metu-dev, where present), the generated concrete and asphalt
tiles (``cracknet.demo.synthetic``, seeds of their own: none of the adaptation sets'),
and trains a cracknet model on it with ``run_training``: ImageNet weights where
torchvision can load them, else random init (said so, and recorded in the card).
The patches are independent images, so the split is by content hash
(``--group-by none``). Prints the test metrics per source, so a weak surface
is not hidden by a strong one; ``bench/adapt.py`` adapts from this model.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cracknet import storage  # noqa: E402
from cracknet.data.trees import CLASS_NAMES, discover  # noqa: E402
from cracknet.demo.synthetic import generate  # noqa: E402
from cracknet.errors import CracknetError  # noqa: E402
from cracknet.measure.metrics import binary_metrics  # noqa: E402
from cracknet.model.network import imagenet_state_dict  # noqa: E402
from cracknet.predict.evaluate import predict_tree  # noqa: E402
from cracknet.predict.scorer import Scorer  # noqa: E402
from cracknet.train.config import TrainConfig  # noqa: E402
from cracknet.train.driver import run_training  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEV_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "metu-dev"))
RUNS = os.path.normpath(os.path.join(HERE, "..", "runs"))


def build_tree(tree: str, metu: str | None, per_class: int) -> dict[str, int]:
    """``<tree>/<label>/<source>-<name>``: links to the METU patches and to generated tiles (in ``<tree>-generated``)."""
    counts = {}
    generated = tree.rstrip("/") + "-generated"
    sources = {"concrete": dict(size=96, seed=30), "asphalt": dict(size=227, seed=31)}
    for surface, args in sources.items():
        generate(os.path.join(generated, surface), per_class=per_class, surface=surface, **args)
    roots = {name: os.path.join(generated, name) for name in sources}
    if metu and os.path.isdir(metu):
        roots = {"metu": os.path.abspath(metu), **roots}
    for source, root in roots.items():
        images = discover(root)
        for image in images:
            link = os.path.join(tree, CLASS_NAMES[image.label], f"{source}-{os.path.basename(image.uri)}")
            os.makedirs(os.path.dirname(link), exist_ok=True)
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(image.uri), link)
        counts[source] = len(images)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metu", default=DEV_DATA, help="the METU concrete patches (default: ../shared/data/metu-dev)")
    parser.add_argument("--per-class", type=int, default=300, help="generated tiles per class and surface")
    parser.add_argument("--tree", default=os.path.join(RUNS, "base-data"), help="where the labelled tree is built")
    parser.add_argument("--output", default=os.path.join(RUNS, "base"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--weights", default="imagenet", help="imagenet (random init where it cannot be loaded), "
                                                              "none, or a state-dict file")
    args = parser.parse_args()

    counts = build_tree(args.tree, args.metu, args.per_class)
    print(f"Base data under {args.tree}: " + ", ".join(f"{n} {source}" for source, n in counts.items()), flush=True)
    weights = args.weights
    if weights == "imagenet":
        try:
            imagenet_state_dict()
        except CracknetError as exc:
            print(f"{exc} Training from random init instead.", flush=True)
            weights = "none"
    cfg = TrainConfig(data=args.tree, output=args.output, epochs=args.epochs, image_size=args.image_size,
                      num_workers=args.num_workers, weights=weights, group_by="none", overwrite=True)
    card = run_training(cfg, log=lambda line: print(line, flush=True))
    m = card["metrics"]["test"]
    print(f"Base model {card['folder']} (model_id {card['model_id']}, weights {weights}, {args.epochs} epochs at "
          f"{args.image_size} px, {card['training']['seconds']:.0f} s): test accuracy {m['accuracy']:.4f}, recall "
          f"{m['recall']:.4f}, ROC-AUC {m['roc_auc']:.4f} at threshold {card['threshold']:.4f}")
    found = predict_tree(Scorer.load(card["folder"]), storage.absolute(args.tree), split="test")
    for source in counts:
        keep = [i for i, uri in enumerate(found.uris) if os.path.basename(uri).startswith(f"{source}-")]
        s = binary_metrics(found.probs[keep], found.labels[keep], card["threshold"])
        print(f"  test, {source:<9} {s['n']:>5} images: accuracy {s['accuracy']:.4f}, recall {s['recall']:.4f}, "
              f"ROC-AUC {s['roc_auc']:.4f}")


if __name__ == "__main__":
    main()
