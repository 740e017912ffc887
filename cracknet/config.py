"""Run settings as frozen dataclasses; the command-line flags are built from their fields.

    cfg = TrainConfig(data="../shared/data/metu-dev", output="runs/demo", image_size=64)

Each field's ``help`` metadata is its flag's help text, so a setting is
declared once and the CLI, the Ray job entrypoint and the tests all share it.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, get_args, get_type_hints

from cracknet.data import check_grouping
from cracknet.geometry import DEFAULT_WIDTH_CLASSES, parse_width_classes
from cracknet.lease import DEFAULT_LEASE_SECONDS
from cracknet.errors import CracknetError
from cracknet.numbers import LEASE_SECONDS, MM_PER_PIXEL, SHARE, Range, check_fields, checked
from cracknet.metrics import MAX_FALSE_ALARMS
from cracknet.monitor import check_webhook_url
from cracknet.transforms import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


RECALL = Range(0, 1, low_open=True)                # a recall target, or a share of false alarms allowed
CONFIDENCE = Range(0, 1, high_open=True)


def check_recall_settings(target_recall: Optional[float], recall_confidence: float,
                          max_false_alarms: float = MAX_FALSE_ALARMS) -> None:
    """The operating-point settings of `evaluate` (``target_recall`` None: not asked for); `train` declares the same
    ranges on its fields."""
    if target_recall is not None:
        checked("--target-recall", target_recall, RECALL)
    checked("--recall-confidence", recall_confidence, CONFIDENCE)
    checked("--max-false-alarms", max_false_alarms, RECALL)


MIN_TILE = 16


def check_tile_size(tile_size: int) -> None:
    """The tile side of `score` and `evaluate`: 0 for the model's own, else enough source pixels to see."""
    if tile_size != 0 and tile_size < MIN_TILE:
        raise CracknetError(f"--tile-size must be 0 (the model's own) or at least {MIN_TILE} source pixels, "
                            f"got {tile_size}.")


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
    epochs: int = _opt(10, "total epochs, including the head-only epochs of two-stage fine-tuning",
                       range=Range(1, 10_000))
    image_size: Optional[int] = _opt(None, "side in pixels the images are resized to (default: 224, or the "
                                           "--base-model's)", range=Range(16, 4096))
    source_size: int = _opt(0, "side in source pixels of what one model input shows: the crops photos with masks "
                               "are cut into for training, and the tiles of large photos when scoring (default: "
                               "--image-size for photos with masks, their own scale; else the training images' "
                               "typical side)", range=Range(0, 16_384))
    batch_size: Optional[int] = _opt(None, "images per worker per step (default: 64, fewer for small sets so that "
                                           "an epoch still makes 8 steps, down to 8)", range=Range(2, 65_536))
    num_workers: int = _opt(2, "Ray Train data-parallel workers", range=Range(1, 4096))
    use_gpu: bool = _opt(False, "one GPU per worker, bf16 autocast and channels_last")
    fp32: bool = _opt(False, "train in float32 even where bf16 is fast (GPUs, CPUs with bf16 instructions)")
    cpus_per_worker: float = _opt(1.0, "CPUs reserved for each training worker", range=Range(0, 1024, low_open=True))
    weights: str = _opt("imagenet", "starting weights: imagenet, none, or a state-dict file (path or s3://)")
    base_model: Optional[str] = _opt(None, "adapt this cracknet model (a model folder, path or s3://): start from its "
                                           "weights and normalisation instead of --weights")
    augmentation: str = _opt("auto", "standard (flips, turns, small zoom, lighting), strong (also scale, blur, "
                                     "noise, JPEG quality, grey and colour casts), or auto: strong with --base-model")
    keep: str = _opt("auto", "the epoch whose weights the model holds: last, best (lowest validation loss), "
                             "or auto: best with --base-model")
    head_epochs: Optional[int] = _opt(None, "epochs training only the new head before unfreezing, pretrained starts "
                                            "only (default: the start's recipe, RECIPES)", range=Range(0, 10_000))
    lr: float = _opt(1e-3, "peak learning rate (training from scratch, and the head-only stage)",
                     range=Range(0, 10, low_open=True))
    finetune_lr: Optional[float] = _opt(None, "peak learning rate once the whole pretrained network trains "
                                              "(default: the start's recipe, RECIPES)",
                                        range=Range(0, 10, low_open=True))
    weight_decay: float = _opt(0.05, "AdamW weight decay", range=Range(0, 10))
    warmup_epochs: float = _opt(0.5, "linear warm-up length at the start of each stage, in epochs",
                                range=Range(0, 10_000))
    group_by: str = _opt("auto", "keep these together in one split: auto (the photo folder when the tree is "
                                 "<label>/<photo>/<tile>, else each photo of a mask tree, else none), none (each "
                                 "image by its content hash), photo (each image), folder, folder:N (the first N "
                                 "folders below the label), or a regular expression "
                                 "matched at the start of the file name, e.g. '(.*)_x\\d+_y\\d+' (its first group)")
    val_fraction: float = _opt(0.15, "share of images (whole groups where there are groups) held out for validation",
                               range=Range(0, 0.9, low_open=True, high_open=True))
    test_fraction: float = _opt(0.15, "share of images (whole groups where there are groups) held out for the final "
                                      "test", range=Range(0, 0.9, low_open=True, high_open=True))
    target_recall: float = _opt(0.98, "the decision threshold is the highest one that keeps at least this recall "
                                      "on the validation split (a missed crack costs more than a false alarm)",
                                range=RECALL)
    recall_confidence: float = _opt(0.95, "confidence that the threshold keeps --target-recall on new images "
                                          "(a Clopper-Pearson bound on validation recall; 0: the plain estimate)",
                                    range=CONFIDENCE)
    max_false_alarms: float = _opt(MAX_FALSE_ALARMS, "whatever the recall target asks, the threshold flags at most "
                                                     "this share of the validation no-crack images", range=RECALL)
    max_bad_fraction: float = _opt(0.01, "fail when more than this share of the images cannot be decoded",
                                   range=Range(0, 1, high_open=True))
    max_failures: int = _opt(3, "worker failures to recover from (resuming from the last checkpoint)",
                             range=Range(0, 1000))
    seed: int = _opt(0, "random seed for initialisation, shuffling and augmentation", range=Range(0, 2**32 - 1))
    overwrite: bool = _opt(False, "replace a finished model and start training afresh")
    mlflow: Optional[str] = _opt(None, "MLflow tracking URI: log the run there and register the model (default: "
                                       "MLFLOW_TRACKING_URI; neither: no tracking); sqlite:///runs/mlflow.db is a "
                                       "local store to try it")
    experiment: str = _opt("cracknet", "the MLflow experiment of the run")
    registered_model: str = _opt("cracknet", "with tracking, register the model as a version of this registered "
                                             "model ('' for none)")
    ray_address: Optional[str] = _opt(None, "Ray cluster to use (default: RAY_ADDRESS, else a local Ray)")
    verbose: bool = _opt(False, "also show Ray's INFO logs and Ray Data's progress bars")

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


@dataclass(frozen=True)
class ScoreConfig:
    model: str = field(metadata={"help": "the model/ folder, the training output above it, or a registered "
                                         "version: models:/NAME@ALIAS, models:/NAME/VERSION"})
    input: str = field(metadata={"help": "images: a folder, s3://bucket/prefix, or a Parquet/CSV manifest of URIs"})
    output: str = field(metadata={"help": "the results table (Delta Lake): a folder or s3:// prefix"})
    input_prefix: Optional[str] = _opt(None, "images must lie under this location (default: the input folder, or "
                                             "a manifest's bucket on S3 / its folder on local disk)")
    batch_size: int = _opt(0, "tiles per model call (an image up to 1.5 tiles per side is one tile; default: 64, "
                              "or 8 in float32 on a CPU, where smaller calls are faster)", range=Range(0, 65_536))
    num_actors: int = _opt(0, "model actors (default: one per GPU, or one on a CPU-only cluster)", range=Range(0, 4096))
    use_gpu: bool = _opt(False, "one GPU per model actor even before GPU workers are up (autoscaling clusters); "
                                "by default GPUs are used when the cluster has them")
    tile_size: int = _opt(0, "tile side in source pixels for large images (default: the model's training images)",
                          range=Range(0, 16_384))
    tile_overlap: float = _opt(0.25, "overlap of neighbouring tiles, as a share of the tile side",
                               range=Range(0, 1, high_open=True))
    max_pixels: int = _opt(DEFAULT_MAX_PIXELS, "images with more pixels are refused (decompression bombs); 16- and "
                                               "32-bit images count by the memory they need, as 8-bit RGB would",
                           range=Range(1, None))
    max_bytes: int = _opt(DEFAULT_MAX_BYTES, "files larger than this many bytes are refused by their size, unread",
                          range=Range(1, None))
    retry_errors: bool = _opt(False, "score again every image whose last attempt was an error row, permanent or not")
    fp32: bool = _opt(False, "score in float32 even where bf16 is fast (GPUs, CPUs with bf16 instructions)")
    compile: bool = _opt(False, "run the model under torch.compile: about a minute of compiling per actor, then "
                                "about 1.5x faster on CPUs with bf16 (pays from a few thousand images per actor); "
                                "little faster in float32")
    read_batch_size: int = _opt(64, "images per read-and-decode task (their tiles reach the model in packs of "
                                    "about 64 tiles, or --batch-size where larger)", range=Range(1, 65_536))
    rows_per_part: int = _opt(4096, "images per Parquet file of the results table", range=Range(1, 10_000_000))
    lease_seconds: float = _opt(DEFAULT_LEASE_SECONDS, "a run that stops renewing its lease on the output for this "
                                                       "long is presumed dead, and the next run takes the output over",
                                range=LEASE_SECONDS)
    mm_per_pixel: Optional[float] = _opt(None, "the photos' scale (ground sample distance) in millimetres per pixel: "
                                               "crack lengths and widths in mm, and severity classes (default: "
                                               "unknown, so those are null)", range=MM_PER_PIXEL)
    width_classes: str = _opt(DEFAULT_WIDTH_CLASSES, "severity classes by crack width in mm, name:below_mm,...,name "
                                                     "(default: AASHTO MBEI defect 1130, reinforced concrete)")
    mask_gate: Optional[float] = _opt(None, "models with a mask decoder draw crack masks of the tiles at or above "
                                            "this crack probability (default: the model's threshold)", range=SHARE)
    masks: Optional[str] = _opt(None, "also write each cracked image's crack mask there, an 8-bit PNG at the "
                                      "photo's size (crack 255): a folder, s3:// prefix, or <output>/_masks")
    mlflow: Optional[str] = _opt(None, "the MLflow registry for a models:/NAME@ALIAS or models:/NAME/VERSION "
                                       "--model (default: MLFLOW_TRACKING_URI)")
    alert_webhook: Optional[str] = _opt(None, "POST the night's alerts here as one JSON message (Slack and Teams "
                                              "incoming webhooks take it); never fails the run (default: "
                                              "CRACKNET_ALERT_WEBHOOK)")
    drift_window: int = _opt(7, "monitoring compares a night with this many recent scoring runs", range=Range(1, 1000))
    drift_psi: float = _opt(0.25, "alert when the population-stability index of the crack probabilities, the "
                                  "brightness or the sharpness against recent nights exceeds this",
                            range=Range(0, 100, low_open=True))
    crack_rate_margin: float = _opt(0.05, "alert when the crack rate lies this far outside recent nights' range "
                                          "(beyond its own 99%% binomial interval)", range=Range(0, 1, high_open=True))
    max_error_rate: float = _opt(0.05, "alert when more than this share of the night's images are error rows",
                                 range=Range(0, 1, high_open=True))
    structure_growth: int = _opt(2, "alert when a structure this run surveyed has this many more cracked photos "
                                    "than just before, and a crack rate above the rate before (beyond its 95%% "
                                    "binomial interval)", range=Range(1, None))
    length_growth: float = _opt(0.5, "alert when a structure's crack length per photo grew by more than this share "
                                     "in a survey (models that draw masks)",
                                range=Range(0, 1000, low_open=True))
    ray_address: Optional[str] = _opt(None, "Ray cluster to use (default: RAY_ADDRESS, else a local Ray)")
    verbose: bool = _opt(False, "also show Ray's INFO logs and Ray Data's progress bars")

    def __post_init__(self):
        check_fields(self)  # every number finite and in its field's range
        parse_width_classes(self.width_classes)
        if self.alert_webhook is not None:
            check_webhook_url(self.alert_webhook)
        check_tile_size(self.tile_size)


def add_arguments(parser: argparse.ArgumentParser, cls: type, **defaults: Any) -> None:
    """Add one flag per dataclass field; fields without a default are required."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default)
        required = default is dataclasses.MISSING
        help_text = f.metadata.get("help", "")
        if hints[f.name] is bool:
            parser.add_argument(flag, action="store_true", default=bool(default), help=help_text)
            continue
        hint = next((a for a in get_args(hints[f.name]) if a is not type(None)), hints[f.name])  # Optional[X]: X
        kind = {int: int, float: float}.get(hint, str)
        parser.add_argument(
            flag,
            type=kind,
            required=required,
            default=None if required else default,
            help=help_text + ("" if required or default is None or "default" in help_text
                              else f" (default: {default})"),
        )


def from_arguments(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
