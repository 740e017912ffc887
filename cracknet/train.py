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
import functools
import json
import platform
import tempfile
import threading
import time
from typing import Any, Callable

import numpy as np
import torch

import cracknet
from cracknet import checkpoint as ckpt, registry, storage, tracking
from cracknet.config import TrainConfig, batch_size_for
from cracknet.data import NO_GROUPS, discover, has_masks, resolve_grouping, ungrouped_tiles
from cracknet.datasets import load_labelled, split_datasets
from cracknet.engine import Precision, log_loss, lr_at, train_one_epoch
from cracknet.errors import CracknetError, kind_of, root_cause
from cracknet.masks import CrackSegmenter
from cracknet.metrics import binary_metrics
from cracknet.cluster import ensure_ray, train_log_level
from cracknet.card import NOT_RECORDED, PHOTO_SIZE, build_card, has_decoder, lineage, preprocessing_of
from cracknet.model import (CARD_FILE, build_model, imagenet_state_dict, load_artifact, load_model_state,
                            load_starting_weights, save_artifact, set_backbone_trainable)
from cracknet.transforms import ImageError, Preprocessing, open_image

RUN_NAME = "train"
MASK_TRUTH_SHARE = 64  # of 255: a model pixel at least a quarter crack is crack in a mask resized to the model
# Settings that must not change when an unfinished run is resumed.
RESUME_KEYS = ("data", "image_size", "weights", "base_model", "seed", "val_fraction", "test_fraction",
               "head_epochs", "augmentation", "keep")


# ---------------------------------------------------------------------------
# On each Ray Train worker


def _gather(obj: Any) -> list:
    """The object from every worker, in rank order (works on gloo and NCCL)."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def predict_shared(model: torch.nn.Module, batches, spec: Preprocessing, device: torch.device, rank: int,
                   world: int) -> tuple[np.ndarray, np.ndarray]:
    """Predict a whole (unsplit) dataset, each worker scoring the rows with idx % world == rank; every worker
    gets all predictions in idx order.

    Through the scorer the nightly job uses (so the threshold is chosen on its numerics), and on the
    unwrapped module: a DistributedDataParallel forward syncs buffers across workers, and a worker whose
    share of a batch is empty skips its forward, so the workers would issue different collectives.
    """
    from cracknet.scorer import Scorer

    module = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    if world > 1 and torch.distributed.is_initialized():
        # What the wrapped model's forward would have done, once and on every rank alike: BatchNorm statistics
        # from rank 0 (each rank's last training step updated its own), the ones the saved model holds.
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer, src=0)
    scorer = Scorer(module, spec, device=device)
    local = scorer.predict_batches(batches, keep=lambda idx: idx % world == rank)
    parts = _gather(local)
    probs, labels, idx = (np.concatenate([p[i] for p in parts]) for i in range(3))
    order = np.argsort(idx)
    return probs[order], labels[order]


def labelled(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The predictions of the rows with a label (not the crops the head is not taught: ``datasets.UNLABELLED``)."""
    keep = labels >= 0
    return probs[keep], labels[keep]


def _batches(shard, cfg: TrainConfig):
    return shard.iter_torch_batches(batch_size=cfg.batch_size)


def _optimizer(module: torch.nn.Module, cfg: TrainConfig, stage: str) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=0.0, weight_decay=cfg.weight_decay if stage == "all" else 0.0)


@dataclasses.dataclass(frozen=True)
class Worker:
    """What a training worker is given: the run's settings and where it stands among the workers."""
    cfg: TrainConfig
    spec: Preprocessing
    steps_per_epoch: int
    rank: int
    world: int
    device: torch.device
    precision: Precision


@dataclasses.dataclass
class Trainee:
    """What a worker carries from epoch to epoch: the model, its optimiser and stage, and the run so far."""
    module: torch.nn.Module
    start_epoch: int = 0
    history: list = dataclasses.field(default_factory=list)
    restarts: int = 0
    best: dict | None = None      # the kept epoch: {"epoch", "val_loss", "model"}
    resumed: dict | None = None   # the checkpoint resumed from, until its epoch is trained again
    model: torch.nn.Module | None = None  # the module as prepared for DDP in the current stage
    optimizer: torch.optim.Optimizer | None = None
    stage: str | None = None


def resume(cfg: TrainConfig, base_model_id: str | None, masks: bool = False) -> Trainee:
    """The model (with a mask decoder when ``masks``) and where training stands: the run's last checkpoint, else
    the base model (the one the driver read and the card names, not one put in its place since) or the starting
    weights. A base classifier starts a segmenter's encoder and crack head."""
    import ray.train

    module = build_model(masks=masks)
    saved = ray.train.get_checkpoint()
    if saved is not None:
        state = ckpt.load(saved)
        module.load_state_dict(state["model"])
        return Trainee(module, start_epoch=state["epoch"], history=state["history"], restarts=state["restarts"] + 1,
                       best=ckpt.kept_epoch(state), resumed=state)
    if cfg.base_model:
        load_model_state(module, load_artifact(cfg.base_model, model_id=base_model_id)[0].state_dict(),
                         cfg.base_model)
    else:
        load_starting_weights(module, cfg.weights)
    return Trainee(module)


def stage_of(cfg: TrainConfig, epoch: int) -> str:
    """Two-stage fine-tuning: the head alone for the first ``head_epochs``, then everything."""
    head_epochs, _ = cfg.stage_epochs
    return "head" if epoch < head_epochs else "all"


def enter_stage(t: Trainee, cfg: TrainConfig, stage: str) -> None:
    """Freeze or unfreeze the backbone, wrap the module for DDP (after requires_grad is set, so each stage wraps
    afresh) and build the stage's optimiser, restored from the checkpoint where it was saved in this stage."""
    import ray.train.torch

    t.model = None
    set_backbone_trainable(t.module, stage == "all")
    t.model = ray.train.torch.prepare_model(t.module)
    t.optimizer = _optimizer(t.module, cfg, stage)
    if t.resumed is not None and t.resumed["stage"] == stage:
        t.optimizer.load_state_dict(t.resumed["optimizer"])
    t.stage = stage


def lr_schedule(cfg: TrainConfig, stage: str, epoch: int, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning rate of each step of ``epoch``: warm-up then cosine decay within its stage, peaking at the
    fine-tuning rate once a pretrained backbone is unfrozen."""
    head_epochs, _ = cfg.stage_epochs
    first, length = (0, head_epochs) if stage == "head" else (head_epochs, cfg.epochs - head_epochs)
    peak = cfg.with_recipe().finetune_lr if stage == "all" and cfg.pretrained else cfg.lr
    warmup = min(cfg.warmup_epochs, length)

    def lr_for_step(step: int) -> float:
        return lr_at(epoch - first + min(step + 1, steps_per_epoch) / steps_per_epoch, length, warmup, peak)

    return lr_for_step


def run_epoch(t: Trainee, w: Worker, epoch: int) -> dict:
    """Train one epoch on this worker's shard, then score the validation split on all workers; returns the
    epoch's figures (the same on every worker), and remembers the epoch if it is the one to keep."""
    import ray.train

    cfg = w.cfg
    lr_for_step = lr_schedule(cfg, t.stage, epoch, w.steps_per_epoch)
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + w.rank)
    batches = ray.train.get_dataset_shard("train").iter_torch_batches(
        batch_size=cfg.batch_size, drop_last=True,
        local_shuffle_buffer_size=cfg.batch_size * 8, local_shuffle_seed=cfg.seed + epoch * 97 + w.rank,
    )
    started = time.monotonic()
    loss_sum, seen, right = train_one_epoch(t.model, batches, t.optimizer, w.spec, w.device, generator, lr_for_step,
                                            w.precision, backbone_frozen=(t.stage == "head"),
                                            strong_augmentation=cfg.strong_augmentation)
    train_seconds = time.monotonic() - started
    totals = _gather((loss_sum, seen, right))
    val_probs, val_labels = predict_shared(t.module, _batches(ray.train.get_dataset_shard("val"), cfg), w.spec,
                                           w.device, w.rank, w.world)
    val_probs, val_labels = labelled(val_probs, val_labels)
    val = binary_metrics(val_probs, val_labels)
    images = sum(n for _, n, _ in totals)
    metrics = {
        "epoch": epoch + 1,
        "stage": t.stage,
        "train_loss": sum(loss for loss, _, _ in totals) / max(1, images),
        "train_images": images,
        "train_accuracy": sum(r for _, _, r in totals) / max(1, images),
        "val_loss": log_loss(val_probs, val_labels),
        **{f"val_{k}": val[k] for k in ("accuracy", "precision", "recall", "f1", "roc_auc")},
        "lr": lr_for_step(w.steps_per_epoch - 1),
        "images_per_second": images / max(train_seconds, 1e-9),
        "seconds": time.monotonic() - started,
    }
    t.history.append(metrics)
    if cfg.keep_best and (t.best is None or metrics["val_loss"] < t.best["val_loss"]):
        t.best = {"epoch": epoch + 1, "val_loss": metrics["val_loss"],
                  "model": {k: v.detach().clone() for k, v in t.module.state_dict().items()}}
    return metrics


def save_checkpoint(t: Trainee, w: Worker, metrics: dict) -> None:
    """Report the epoch to Ray Train with rank 0's checkpoint, uploaded through storage's verified writes."""
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        saved = None
        if w.rank == 0:
            saved = ckpt.save(folder, t.module, t.optimizer, t.stage, metrics["epoch"], t.history, t.restarts, t.best)
        ray.train.report(metrics, checkpoint=saved, checkpoint_dir_name=f"epoch-{metrics['epoch']:04d}",
                         checkpoint_upload_fn=functools.partial(ckpt.upload, like=w.cfg.output))
    t.resumed = None


def train_loop_per_worker(config: dict) -> dict | None:
    """The Ray Train loop: unpack, resume, train each epoch in its stage, report; rank 0 returns predictions."""
    import ray.train
    import ray.train.torch

    cfg: TrainConfig = config["cfg"]
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    w = Worker(cfg, config["spec"], config["steps_per_epoch"], ctx.get_world_rank(), ctx.get_world_size(), device,
               Precision.for_training(device, allow_bf16=not cfg.fp32))
    torch.manual_seed(cfg.seed)

    t = resume(cfg, config["base_model_id"], config.get("masks", False))
    if w.precision.channels_last:
        t.module = t.module.to(memory_format=torch.channels_last)
    for epoch in range(t.start_epoch, cfg.epochs):
        if stage_of(cfg, epoch) != t.stage:
            enter_stage(t, cfg, stage_of(cfg, epoch))
        metrics = run_epoch(t, w, epoch)
        if w.rank == 0 and config.get("progress") is not None:
            _tell(config["progress"], metrics)
        save_checkpoint(t, w, metrics)

    if t.model is None:  # resumed after the last epoch: only the final predictions are left to do
        t.module.to(device)
    if t.best is not None:  # the kept epoch's weights are the ones tested and saved
        t.module.load_state_dict(t.best["model"])
    val, test = (predict_shared(t.module, _batches(ray.train.get_dataset_shard(split), cfg), w.spec, device, w.rank,
                                w.world) for split in ("val", "test"))
    if w.rank != 0:
        return None
    out = {"val": val, "test": test, "history": t.history, "restarts": t.restarts}
    if isinstance(t.module, CrackSegmenter):
        out["masks"] = {split: predict_masks(t.module, _batches(ray.train.get_dataset_shard(split), cfg), w)
                        for split in ("val", "test")}
    return out


def predict_masks(module: CrackSegmenter, batches, w: Worker) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(crack probability map as uint8 0-255, true mask, row index) at the model's size for each image or crop of a
    split that has a mask; a model pixel is crack in the truth when at least a quarter of it is
    (``transforms.mask_at``)."""
    from cracknet.transforms import eval_preset

    precision = Precision.for_inference(w.device, allow_bf16=not w.cfg.fp32)
    module.eval()
    pairs = []
    with torch.no_grad():
        for batch in batches:
            known = batch["has_mask"].bool()
            if not bool(known.any()):
                continue
            x = precision.inputs(eval_preset(batch["image"][known].to(w.device), w.spec))
            with precision.autocast(w.device):
                _, logits = module(x)
            probs = (torch.sigmoid(logits.float())[:, 0] * 255).round().to(torch.uint8).cpu().numpy()
            pairs += list(zip(probs, batch["mask"][known].numpy() >= MASK_TRUTH_SHARE, batch["idx"][known].tolist()))
    return pairs


def epoch_line(m: dict, epochs: int) -> str:
    """The one console line of an epoch."""
    return (f"Epoch {m['epoch']}/{epochs} ({m['stage']}): train loss {m['train_loss']:.4f}, validation accuracy "
            f"{m['val_accuracy']:.4f}, recall {m['val_recall']:.4f}, AUC {m['val_roc_auc']:.4f}; "
            f"{m['images_per_second']:.0f} images/s, {m['seconds']:.0f} s")


# ---------------------------------------------------------------------------
# On the driver


def _tell(queue, metrics: dict) -> None:
    """Hand an epoch's figures to the driver (its console line, its tracking). They are only for those: a queue
    that is gone (its node was lost) must not fail the training run, or every restart would fail again on it."""
    try:
        queue.put(metrics, timeout=10)
    except Exception:  # noqa: BLE001 - ActorDiedError, a full queue, a lost connection
        pass


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

    return {"cracknet": cracknet.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "ray": ray.__version__, "python": platform.python_version()}


def resolve_settings(cfg: TrainConfig) -> tuple[TrainConfig, Preprocessing, dict | None, list]:
    """The run's settings made concrete: absolute locations (Ray Train runs each worker in a folder of its own),
    the base model's card, the labelled (or masked) images, the image size and the grouping of the splits."""
    weights = cfg.weights if cfg.weights in ("imagenet", "none") else storage.absolute(cfg.weights)
    base = registry.read_model(storage.absolute(cfg.base_model), cfg.mlflow) if cfg.base_model else None
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
    from cracknet.report import build_report

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
    photo's true mask. The threshold is the one the card will hold (``card.build_card``)."""
    from cracknet.card import operating_point_of
    from cracknet.datasets import crop_of, load_mask
    from cracknet.masks import photo_probabilities
    from cracknet.transforms import DEFAULT_MAX_PIXELS

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
    from cracknet.datasets import CROP_OVERLAP, crop_of
    from cracknet.scorer import Scorer
    from cracknet.transforms import decode_tiles

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
