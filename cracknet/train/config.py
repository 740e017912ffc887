"""The settings of a training run (``cracknet train``): each field is its flag, with help and range, and the
recipes that fill in what a user leaves out."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from cracknet.config import option
from cracknet.data.splits import check_grouping
from cracknet.errors import CracknetError
from cracknet.measure.thresholds import CONFIDENCE, MAX_FALSE_ALARMS, RECALL
from cracknet.numbers import Range, check_fields

BATCH_SIZE, MIN_BATCH_SIZE, MIN_STEPS = 64, 8, 8


def batch_size_for(n_train: int, num_workers: int) -> int:
    """The default images per worker per step: 64, or fewer (not under 8) where the train split is too small
    for 8 steps an epoch, as with the few hundred labelled images of an adaptation."""
    return max(MIN_BATCH_SIZE, min(BATCH_SIZE, n_train // (num_workers * MIN_STEPS)))


@dataclass(frozen=True)
class Recipe:
    """How a start trains where the flags do not say: the head-only epochs with the backbone frozen, and the peak
    rate once the whole network trains (``lr`` trains from scratch and the head-only stage)."""
    head_epochs: int
    finetune_lr: float


# Checked by bench/pretrained_start.py on a network that really is pretrained (an ImageNet EfficientNet-Lite0 as
# the stand-in for ResNet50's ImageNet start, and a crack model made from it): 3e-4 beat the 1e-4 used before for
# both starts on held-out photos; "Starting weights" in docs/benchmarks.md has the table.
RECIPES = {
    "none": Recipe(head_epochs=0, finetune_lr=1e-3),        # random init: one stage at --lr
    "pretrained": Recipe(head_epochs=1, finetune_lr=3e-4),  # --weights imagenet or a weights file
    "base_model": Recipe(head_epochs=1, finetune_lr=3e-4),  # --base-model: a cracknet model
    # --base-model that was itself trained from random init (as on CPU-only machines): 3e-4 unsettled its weights
    # on held-out photos where 1e-4 adapted them (bench/adapt.py)
    "random_init_base_model": Recipe(head_epochs=1, finetune_lr=1e-4),
}


@dataclass(frozen=True)
class TrainConfig:
    data: str = field(metadata={"help": "labelled image tree <root>/<label>/...: a local path or s3://bucket/prefix"})
    output: str = field(metadata={"help": "where the model artifact (<output>/model/) and checkpoints go"})
    epochs: int = option(10, "total epochs, including the head-only epochs of two-stage fine-tuning",
                       range=Range(1, 10_000))
    image_size: Optional[int] = option(None, "side in pixels the images are resized to (default: 224, or the "
                                           "--base-model's)", range=Range(16, 4096))
    source_size: int = option(0, "side in source pixels of what one model input shows: the crops photos with masks "
                               "are cut into for training, and the tiles of large photos when scoring (default: "
                               "--image-size for photos with masks, their own scale; else the training images' "
                               "typical side)", range=Range(0, 16_384))
    batch_size: Optional[int] = option(None, "images per worker per step (default: 64, fewer for small sets so that "
                                           "an epoch still makes 8 steps, down to 8)", range=Range(2, 65_536))
    num_workers: int = option(2, "Ray Train data-parallel workers", range=Range(1, 4096))
    use_gpu: bool = option(False, "one GPU per worker, bf16 autocast and channels_last")
    fp32: bool = option(False, "train in float32 even where bf16 is fast (GPUs, CPUs with bf16 instructions)")
    cpus_per_worker: float = option(1.0, "CPUs reserved for each training worker", range=Range(0, 1024, low_open=True))
    weights: str = option("imagenet", "starting weights: imagenet, none, or a state-dict file (path or s3://)")
    base_model: Optional[str] = option(None, "adapt this cracknet model (a model folder, path or s3://): start from its "
                                           "weights and normalisation instead of --weights")
    augmentation: str = option("auto", "standard (flips, turns, small zoom, lighting), strong (also scale, blur, "
                                     "noise, JPEG quality, grey and colour casts), or auto: strong with --base-model")
    keep: str = option("auto", "the epoch whose weights the model holds: last, best (lowest validation loss), "
                             "or auto: best with --base-model")
    head_epochs: Optional[int] = option(None, "epochs training only the new head before unfreezing, pretrained starts "
                                            "only (default: the start's recipe, RECIPES)", range=Range(0, 10_000))
    lr: float = option(1e-3, "peak learning rate (training from scratch, and the head-only stage)",
                     range=Range(0, 10, low_open=True))
    finetune_lr: Optional[float] = option(None, "peak learning rate once the whole pretrained network trains "
                                              "(default: the start's recipe, RECIPES)",
                                        range=Range(0, 10, low_open=True))
    weight_decay: float = option(0.05, "AdamW weight decay", range=Range(0, 10))
    warmup_epochs: float = option(0.5, "linear warm-up length at the start of each stage, in epochs",
                                range=Range(0, 10_000))
    group_by: str = option("auto", "keep these together in one split: auto (the photo folder when the tree is "
                                 "<label>/<photo>/<tile>, else each photo of a mask tree, else none), none (each "
                                 "image by its content hash), photo (each image), folder, folder:N (the first N "
                                 "folders below the label), or a regular expression "
                                 "matched at the start of the file name, e.g. '(.*)_x\\d+_y\\d+' (its first group)")
    val_fraction: float = option(0.15, "share of images (whole groups where there are groups) held out for validation",
                               range=Range(0, 0.9, low_open=True, high_open=True))
    test_fraction: float = option(0.15, "share of images (whole groups where there are groups) held out for the final "
                                      "test", range=Range(0, 0.9, low_open=True, high_open=True))
    target_recall: float = option(0.98, "the decision threshold is the highest one that keeps at least this recall "
                                      "on the validation split (a missed crack costs more than a false alarm)",
                                range=RECALL)
    recall_confidence: float = option(0.95, "confidence that the threshold keeps --target-recall on new images "
                                          "(a Clopper-Pearson bound on validation recall; 0: the plain estimate)",
                                    range=CONFIDENCE)
    max_false_alarms: float = option(MAX_FALSE_ALARMS, "whatever the recall target asks, the threshold flags at most "
                                                     "this share of the validation no-crack images", range=RECALL)
    max_bad_fraction: float = option(0.01, "fail when more than this share of the images cannot be decoded",
                                   range=Range(0, 1, high_open=True))
    max_failures: int = option(3, "worker failures to recover from (resuming from the last checkpoint)",
                             range=Range(0, 1000))
    seed: int = option(0, "random seed for initialisation, shuffling and augmentation", range=Range(0, 2**32 - 1))
    overwrite: bool = option(False, "replace a finished model and start training afresh")
    mlflow: Optional[str] = option(None, "MLflow tracking URI: log the run there and register the model (default: "
                                       "MLFLOW_TRACKING_URI; neither: no tracking); sqlite:///runs/mlflow.db is a "
                                       "local store to try it")
    experiment: str = option("cracknet", "the MLflow experiment of the run")
    registered_model: str = option("cracknet", "with tracking, register the model as a version of this registered "
                                             "model ('' for none)")
    ray_address: Optional[str] = option(None, "Ray cluster to use (default: RAY_ADDRESS, else a local Ray)")
    verbose: bool = option(False, "also show Ray's INFO logs and Ray Data's progress bars")

    def __post_init__(self):
        check_fields(self)  # every number finite and in its field's range
        checks = [
            (self.val_fraction + self.test_fraction < 0.9,
             "--val-fraction and --test-fraction must be positive and leave at least 10% for training."),
            (self.augmentation in ("auto", "standard", "strong"),
             f"--augmentation must be standard, strong or auto, got {self.augmentation!r}."),
            (self.keep in ("auto", "last", "best"), f"--keep must be last, best or auto, got {self.keep!r}."),
        ]
        for ok, message in checks:
            if not ok:
                raise CracknetError(message)
        check_grouping(self.group_by)

    @property
    def pretrained(self) -> bool:
        return self.base_model is not None or self.weights != "none"

    @property
    def start(self) -> str:
        """The kind of start, which names its recipe: base_model, pretrained (ImageNet or a weights file), none."""
        return "base_model" if self.base_model is not None else "pretrained" if self.weights != "none" else "none"

    def with_recipe(self, start: str | None = None) -> "TrainConfig":
        """The settings with the recipe of ``start`` (default: ``self.start``) filled in where none was given
        (``RECIPES``)."""
        recipe = RECIPES[start or self.start]
        return dataclasses.replace(
            self, head_epochs=recipe.head_epochs if self.head_epochs is None else self.head_epochs,
            finetune_lr=recipe.finetune_lr if self.finetune_lr is None else self.finetune_lr)

    @property
    def strong_augmentation(self) -> bool:
        return self.augmentation == "strong" or (self.augmentation == "auto" and self.base_model is not None)

    @property
    def keep_best(self) -> bool:
        return self.keep == "best" or (self.keep == "auto" and self.base_model is not None)

    @property
    def stage_epochs(self) -> tuple[int, int]:
        """(head-only epochs, whole-network epochs): two-stage only with pretrained weights."""
        head_epochs = RECIPES[self.start].head_epochs if self.head_epochs is None else self.head_epochs
        head = min(head_epochs, self.epochs - 1) if self.pretrained else 0
        return head, self.epochs - head


