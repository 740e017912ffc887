"""Ray Train data-parallel fine-tuning of ResNet50 on a labelled crack tree.

    cracknet train --data ../shared/data/metu-dev --output runs/demo \\
        --epochs 3 --image-size 64 --num-workers 2 --weights none
    ray job submit --working-dir . -- python jobs/train.py --data s3://b/data --output s3://b/runs/r1

Layout of ``--output``:
    checkpoints/run.json          settings of the run (a rerun with other settings is refused)
    checkpoints/train/epoch-NNNN/ one Ray Train checkpoint per epoch (model, optimiser, history)
    model/weights.pt, model.json  the artifact, written only after training and testing finished

A run that dies (driver or workers) resumes from its last checkpoint when the
same command is run again; worker failures inside a run are recovered by Ray
Train itself (``--max-failures``), resuming at the right epoch.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import threading
import time
from typing import Callable

import numpy as np
import torch

from cracknet import storage
from cracknet.data.loading import load_labelled, split_datasets
from cracknet.data.splits import NO_GROUPS, resolve_grouping, ungrouped_tiles
from cracknet.data.trees import discover, has_masks
from cracknet.errors import CracknetError, kind_of, root_cause
from cracknet.images.decoding import ImageError, Preprocessing, open_image
from cracknet.measure.metrics import binary_metrics
from cracknet.model.card import PHOTO_SIZE, has_decoder, preprocessing_of, read_model
from cracknet.model.network import CARD_FILE, imagenet_state_dict, save_artifact
from cracknet.storage.cluster import ensure_ray, train_log_level
from cracknet.train import checkpoint as ckpt, tracking
from cracknet.train.card_writer import NOT_RECORDED, build_card, lineage
from cracknet.train.config import TrainConfig, batch_size_for
from cracknet.train.worker import epoch_line, labelled, train_loop_per_worker
from cracknet.version import __version__

RUN_NAME = "train"
# Settings that must not change when an unfinished run is resumed.
RESUME_KEYS = ("data", "image_size", "weights", "base_model", "seed", "val_fraction", "test_fraction",
               "head_epochs", "augmentation", "keep")


def _beside_the_driver() -> dict:
    """Actor options that keep a helper actor on the driver's own node: a worker node that disappears (spot
    preemption, a host fault) must not take the driver's console with it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    # Restarted elsewhere should that node go all the same (lines in it then are lost, later ones are not).
    return {"num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True),
            "max_restarts": -1, "max_task_retries": -1}


def _relay(queue, on_epoch: Callable[[dict], None], done: threading.Event) -> None:
    """Hand the workers' epoch figures to ``on_epoch`` on the driver as they come (clean lines, no Ray prefixes)."""
    from ray.util.queue import Empty

    while True:
        try:
            on_epoch(queue.get(timeout=0.5))
        except Empty:
            if done.is_set():
                return
        except Exception:  # noqa: BLE001 - the queue is being restarted, or went with the cluster
            if done.is_set():
                return
            time.sleep(0.5)


def _check_output(cfg: TrainConfig) -> tuple[str, str]:
    """Refuse to clobber a finished model; start afresh or resume an unfinished run."""
    storage.require_bucket(cfg.output)
    model_dir = storage.join(cfg.output, "model")
    checkpoints = storage.join(cfg.output, "checkpoints")
    if cfg.overwrite:
        storage.delete_tree(model_dir)
        storage.delete_tree(checkpoints)
    elif storage.exists(storage.join(model_dir, CARD_FILE)):
        raise CracknetError(f"{cfg.output} already holds a finished model; pass --overwrite to replace it.")
    record_uri = storage.join(checkpoints, "run.json")
    settings = {key: getattr(cfg, key) for key in RESUME_KEYS}
    if storage.exists(record_uri):
        previous = json.loads(storage.read_bytes(record_uri))
        changed = [f"{k} {previous.get(k)!r} -> {settings[k]!r}" for k in RESUME_KEYS if previous.get(k) != settings[k]]
        if changed:
            raise CracknetError(
                f"{cfg.output} holds an unfinished run with other settings ({', '.join(changed)}); "
                "pass --overwrite to start afresh."
            )
    else:
        storage.write_bytes(record_uri, json.dumps(settings, indent=2).encode())
    return model_dir, checkpoints


ADAPT_MAX_SIDE, SIDE_SAMPLE = 128, 16


def default_image_size(base: dict | None, images: list) -> int:
    """224 from scratch or ImageNet. Adapting: the base model's side, raised to the new images' own typical side
    up to 128 px, so that a 96 px tile of hair-thin cracks is not shrunk to a 64 px base (a 1 px crack would
    blur away) and a large tile costs at most 128 px (what a few hundred images can train on a CPU)."""
    if base is None:
        return 224
    step, sides = max(1, len(images) // SIDE_SAMPLE), []
    for image in images[::step][:SIDE_SAMPLE]:
        try:
            sides.append(max(open_image(storage.read_bytes(image.uri)).size))
        except ImageError:  # counted where every image is decoded
            continue
    typical = sorted(sides)[len(sides) // 2] if sides else 0
    return max(base["preprocessing"]["image_size"], min(typical, ADAPT_MAX_SIDE))


def _check_weights(weights: str) -> None:
    """Fail before any cluster work when the starting weights cannot be had."""
    if weights == "imagenet":
        imagenet_state_dict()  # also fills torchvision's cache for workers on this node
    elif weights != "none" and not storage.exists(weights):
        raise CracknetError(f"The weights file {weights} does not exist; use imagenet, none, or a state-dict file.")


def _versions() -> dict[str, str]:
    import ray
    import torchvision

    return {"cracknet": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "ray": ray.__version__, "python": platform.python_version()}


def resolve_settings(cfg: TrainConfig) -> tuple[TrainConfig, Preprocessing, dict | None, list]:
    """The run's settings made concrete: absolute locations (Ray Train runs each worker in a folder of its own),
    the base model's card, the labelled (or masked) images, the image size and the grouping of the splits."""
    weights = cfg.weights if cfg.weights in ("imagenet", "none") else storage.absolute(cfg.weights)
    base = read_model(storage.absolute(cfg.base_model), cfg.mlflow) if cfg.base_model else None
    cfg = dataclasses.replace(cfg, data=storage.absolute(cfg.data), output=storage.absolute(cfg.output),
                              weights=weights, base_model=base["folder"] if base else None)
    cfg = cfg.with_recipe("random_init_base_model" if base and started_from_random_init(base) else None)
    images = discover(cfg.data)
    cfg = dataclasses.replace(cfg, image_size=cfg.image_size or default_image_size(base, images))
    # Adapting keeps the base model's normalisation; the network is size-agnostic, so the size may change.
    spec = dataclasses.replace(preprocessing_of(base), image_size=cfg.image_size) if base else \
        Preprocessing(cfg.image_size)
    cfg = dataclasses.replace(cfg, group_by=resolve_grouping(cfg.group_by, cfg.data, images))
    if has_masks(images):  # photos with masks train on crops of this side, the tiles scoring will cut
        cfg = dataclasses.replace(cfg, source_size=cfg.source_size or cfg.image_size)
    return cfg, spec, base, images


def started_from_random_init(card: dict) -> bool:
    """Whether a model was trained from random init rather than from pretrained weights or another model."""
    training = card.get("training", {})
    return training.get("weights") == "none" and not training.get("base_model")


def split_line(cfg: TrainConfig, plan) -> str:
    """The console line that says how the images were split."""
    by = "by content hash" if plan.grouping == NO_GROUPS else \
        f"by group ({plan.grouping}; groups {json.dumps(plan.group_counts())})"
    return (f"Split {by}: {json.dumps(plan.counts)}; {plan.duplicates} duplicate copies and "
            f"{plan.conflicts} images with conflicting labels dropped, {len(plan.unreadable)} unreadable skipped.")


def _steps_per_epoch(cfg: TrainConfig, n_train: int) -> int:
    steps = n_train // (cfg.num_workers * cfg.batch_size)
    if steps < 1:
        raise CracknetError(
            f"The train split holds {n_train} images, fewer than one batch per worker "
            f"({cfg.num_workers} x {cfg.batch_size}); lower --batch-size or --num-workers."
        )
    return steps


def _fit(trainer, progress, on_epoch: Callable[[dict], None]):
    """Run the trainer while the workers' epoch figures reach ``on_epoch``; the result, or a one-sentence failure."""
    import ray

    done = threading.Event()
    relay = threading.Thread(target=_relay, args=(progress, on_epoch, done), daemon=True)
    relay.start()
    try:
        result = trainer.fit()
    except Exception as exc:
        raise kind_of(exc)(f"Training failed: {root_cause(exc)}") from None
    finally:
        done.set()
        relay.join(timeout=10)
        ray.kill(progress.actor)
    if result.error is not None:
        raise kind_of(result.error)(f"Training failed: {root_cause(result.error)}")
    return result


def run_training(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict:
    """Train, test and write ``<output>/model/``; returns the model card (with ``registered``: the registered
    version, when tracking registered one)."""
    started = time.monotonic()
    cfg, spec, base, images = resolve_settings(cfg)
    if base is None:
        _check_weights(cfg.weights)
    model_dir, checkpoints = _check_output(cfg)
    tracker = tracking.start(cfg.mlflow, cfg.experiment, cfg.registered_model, checkpoints, log)
    try:
        card = _train(cfg, spec, base, images, model_dir, checkpoints, tracker, log, started)
    except BaseException:
        tracker.fail()
        raise
    registered = tracker.finish(card, artifacts=lambda folder: _draw_report(card["folder"], folder))
    return {**card, **({"registered": registered} if registered else {})}


def _draw_report(model_uri: str, folder: str) -> None:
    from cracknet.report.build import build_report

    build_report(model_uri, folder)


def _train(cfg: TrainConfig, spec: Preprocessing, base: dict | None, images: list, model_dir: str, checkpoints: str,
           tracker, log: Callable[[str], None], started: float) -> dict:
    """Decode and split the images, train on Ray Train, test, and save the artifact; returns the card."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    masks = has_masks(images) or bool(base and has_decoder(base))
    masked = sum(1 for image in images if image.mask)
    crop = cfg.source_size if masked else 0
    log(f"Found {len(images)} labelled images under {cfg.data}" +
        (f", {masked} of them with crack masks: training the crack-mask decoder too, on crops of {crop} px of "
         f"each photo{' at its own scale' if crop == cfg.image_size else f' seen at {cfg.image_size} px'} (the "
         "tiles scoring cuts)." if masked else
         " (no crack masks: the decoder of the base model is kept as it is)." if masks else "."))
    warning = ungrouped_tiles(cfg.data, images) if cfg.group_by == NO_GROUPS else ""
    if warning:
        log(f"Warning: {warning}")

    ensure_ray(cfg.ray_address, min_cpus=cfg.num_workers * cfg.cpus_per_worker, verbose=cfg.verbose)
    decoded, plan = load_labelled(images, cfg.data, spec, cfg.val_fraction, cfg.test_fraction,
                                  cfg.max_bad_fraction, cfg.seed, cfg.group_by, segmenter=masks, crop=crop)
    log(split_line(cfg, plan))
    tracker.log_setup({k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_RECORDED},
                      {"uri": cfg.data, "fingerprint": plan.fingerprint,
                       **{f"{split}_images": sum(counts.values()) for split, counts in plan.counts.items()},
                       **{f"{split}_cracks": counts.get("crack", 0) for split, counts in plan.counts.items()}})
    n_train = sum(plan.counts["train"].values())  # crops the head is not taught do not train
    cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size or batch_size_for(n_train, cfg.num_workers))
    steps_per_epoch = _steps_per_epoch(cfg, n_train)

    fs, path = storage.resolve(checkpoints)
    progress = Queue(actor_options=_beside_the_driver())
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg, "spec": spec, "steps_per_epoch": steps_per_epoch, "progress": progress,
                           "base_model_id": base["model_id"] if base else None, "masks": masks},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name=RUN_NAME, storage_path=path, storage_filesystem=fs,
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             logging_config=LoggingConfig(log_level=train_log_level(cfg.verbose))),
        datasets=split_datasets(decoded, plan),
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    def on_epoch(metrics: dict) -> None:
        log(epoch_line(metrics, cfg.epochs))
        tracker.log_epoch(metrics)

    result = _fit(trainer, progress, on_epoch)
    state = ckpt.load(result.checkpoint)
    kept = ckpt.kept_epoch(state) or {"epoch": state["epoch"], "model": state["model"]}
    predictions = result.return_value
    if crop:
        predictions = {**predictions, "masks": photo_masks(predictions, plan, images, cfg),
                       "masks_at": PHOTO_SIZE}
    elif "masks" in predictions:
        predictions = {**predictions, "masks": {split: [(probs.astype(np.float32) / 255.0, truth)
                                                        for probs, truth, _ in pairs]
                                                for split, pairs in predictions["masks"].items()}}
    card = build_card(cfg, spec, plan, predictions, epochs_completed=state["epoch"], kept_epoch=kept["epoch"],
                      seconds=time.monotonic() - started, checkpoints=checkpoints, versions=_versions())
    if base is not None:
        card["lineage"] = lineage(base, _base_on_test(base, plan, cfg.data, cfg.batch_size, crop))
    card = save_artifact(model_dir, kept["model"], card)
    return {**card, "folder": model_dir}


def photo_masks(predictions: dict, plan, images: list, cfg: TrainConfig) -> dict[str, list]:
    """The validation and test photos' masks as the nightly job draws them, at each photo's own size: the maps of
    its crops at or above the crack threshold (the gate) stitched into one map of the photo, each paired with the
    photo's true mask. The threshold is the one the card will hold (``card_writer.build_card``)."""
    from cracknet.data.loading import crop_of, load_mask
    from cracknet.images.decoding import DEFAULT_MAX_PIXELS
    from cracknet.predict.stitching import photo_probabilities
    from cracknet.train.card_writer import operating_point_of

    threshold = operating_point_of(cfg, *labelled(*predictions["val"]))["threshold"]
    mask_of = {storage.resolve(image.uri)[1]: image.mask for image in images if image.mask}
    out = {}
    for split in ("val", "test"):
        paths = {idx: path for path, idx in plan.members[split].items()}
        probs = predictions[split][0]
        photos: dict[str, list] = {}  # photo -> the boxes of its crops
        for path in plan.members[split]:
            photo, box = crop_of(path)
            if box is not None:
                photos.setdefault(photo, []).append(box)
        maps = {}
        for probs_u8, _, idx in predictions["masks"][split]:
            photo, box = crop_of(paths[idx])
            if box is not None and probs[idx] >= threshold:  # the decoder runs on the gated tiles only
                maps.setdefault(photo, {})[box] = probs_u8.astype(np.float32) / 255.0
        pairs = []
        for photo, boxes in sorted(photos.items()):
            truth = load_mask(mask_of[photo], _photo_size(boxes), DEFAULT_MAX_PIXELS)
            decoded = {i: maps[photo][box] for i, box in enumerate(boxes) if box in maps.get(photo, {})}
            pairs.append((photo_probabilities(decoded, boxes, truth.shape[1], truth.shape[0]), truth))
        out[split] = pairs
    return out


def _photo_size(boxes: list) -> tuple[int, int]:
    """A photo's (width, height) from the boxes of the crops that cover it."""
    return max(x + w for x, _, w, _ in boxes), max(y + h for _, y, _, h in boxes)


def _base_on_test(base: dict, plan, data: str, batch_size: int, crop: int = 0) -> dict:
    """The base model's metrics on this run's test split, scored as the nightly job would score them: whole
    images, or, for photos trained on in crops, the same crops read at the base model's input size."""
    from cracknet.data.loading import CROP_OVERLAP, crop_of
    from cracknet.images.decoding import decode_tiles
    from cracknet.predict.scorer import Scorer

    scorer = Scorer.load(base["folder"], batch_tiles=batch_size, model_id=base["model_id"])
    probs, truth, whole = [], [], []
    crops: dict[str, dict] = {}
    for path in plan.members["test"]:
        label = plan.labels[path]
        photo, box = crop_of(path)
        if box is None:
            whole.append(path)
        elif label >= 0:
            crops.setdefault(photo, {})[box] = label
    labels = {storage.to_uri(path, data): plan.labels[path] for path in whole}  # plan: filesystem paths
    uris = sorted(labels)
    for p in (p for start in range(0, len(uris), 256) for p in scorer.predict(uris[start:start + 256])):
        if not p.error:
            probs.append(p.crack_probability)
            truth.append(labels[p.source])
    for photo, wanted in sorted(crops.items()):
        _, _, tiles, boxes = decode_tiles(storage.read_bytes(storage.to_uri(photo, data)), scorer.spec, crop,
                                          CROP_OVERLAP)
        for p, box in zip(scorer.tile_probabilities(np.array(tiles)), boxes):  # a writable copy for torch
            if tuple(int(v) for v in box) in wanted:
                probs.append(float(p))
                truth.append(wanted[tuple(int(v) for v in box)])
    return binary_metrics(np.array(probs), np.array(truth), base["threshold"])
