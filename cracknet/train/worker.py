"""What each Ray Train worker runs: resume from the last checkpoint, train each epoch in its stage (head, then
the whole network), validate, checkpoint, and on rank 0 predict the test images for the driver."""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import time
from typing import Any, Callable

import numpy as np
import torch

from cracknet.images.decoding import Preprocessing
from cracknet.measure.metrics import binary_metrics
from cracknet.model.masks import CrackSegmenter
from cracknet.model.network import (build_model, load_artifact, load_model_state, load_starting_weights,
                                    set_backbone_trainable)
from cracknet.model.precision import Precision
from cracknet.train import checkpoint as ckpt
from cracknet.train.config import TrainConfig
from cracknet.train.epoch import log_loss, lr_at, train_one_epoch

MASK_TRUTH_SHARE = 64  # of 255: a model pixel at least a quarter crack is crack in a mask resized to the model


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
    from cracknet.predict.scorer import Scorer

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
    """The predictions of the rows with a label (not the crops the head is not taught: ``loading.UNLABELLED``)."""
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
    (``decoding.mask_at``)."""
    from cracknet.images.decoding import eval_preset

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


def _tell(queue, metrics: dict) -> None:
    """Hand an epoch's figures to the driver (its console line, its tracking). They are only for those: a queue
    that is gone (its node was lost) must not fail the training run, or every restart would fail again on it."""
    try:
        queue.put(metrics, timeout=10)
    except Exception:  # noqa: BLE001 - ActorDiedError, a full queue, a lost connection
        pass
