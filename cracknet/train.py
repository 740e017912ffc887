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
import os
import platform
import tempfile
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
import torch

import cracknet
from cracknet import storage
from cracknet.config import TrainConfig, batch_size_for
from cracknet.data import CLASS_NAMES, NO_GROUPS, discover, resolve_grouping, ungrouped_tiles
from cracknet.datasets import load_labelled, split_datasets
from cracknet.engine import Precision, log_loss, lr_at, train_one_epoch
from cracknet.errors import CracknetError, kind_of, root_cause
from cracknet.metrics import binary_metrics, evaluation, operating_point, threshold_rule
from cracknet.cluster import ensure_ray, train_log_level
from cracknet.card import preprocessing_of, read_card
from cracknet.model import (CARD_FILE, build_model, imagenet_state_dict, load_artifact, load_starting_weights,
                            save_artifact, set_backbone_trainable)
from cracknet.transforms import ImageError, Preprocessing, open_image

RUN_NAME = "train"
STATE_FILE = "state.pt"
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


def _batches(shard, cfg: TrainConfig):
    return shard.iter_torch_batches(batch_size=cfg.batch_size)


def _optimizer(module: torch.nn.Module, cfg: TrainConfig, stage: str) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=0.0, weight_decay=cfg.weight_decay if stage == "all" else 0.0)


def _load_state(checkpoint) -> dict:
    with checkpoint.as_directory() as folder:
        return read_checkpoint_state(os.path.join(folder, STATE_FILE))


def _best_of(state: dict) -> dict | None:
    """The kept (lowest validation loss) epoch recorded in a checkpoint, with its weights; None: keep the last."""
    best = state.get("best")
    if best is not None and best["model"] is None:
        best = {**best, "model": state["model"]}
    return best


def upload_checkpoint(checkpoint, dir_name: str, like: str):
    """Copy a checkpoint's files into the run's storage folder with storage's verified writes.

    Ray Train's own copy goes through a pyarrow multipart stream whose failed
    final part can be reported only when the stream is destroyed, after the
    checkpoint was registered as saved; a failed write here raises instead, so
    the worker fails and the run resumes from the last checkpoint that exists.
    """
    import ray.train

    run_storage = ray.train.get_context().get_storage()
    path = f"{run_storage.experiment_fs_path}/{dir_name}"
    destination = storage.to_uri(path, like)  # s3://... or the absolute local path
    with checkpoint.as_directory() as folder:
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as f:
                storage.write_bytes(storage.join(destination, name), f.read())
    return ray.train.Checkpoint(path=path, filesystem=run_storage.storage_filesystem)


def read_checkpoint_state(path: str) -> dict:
    """A training checkpoint's state (tensors, numbers, lists), never unpickling other objects."""
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CracknetError(f"Refusing to resume from {path}: it holds Python objects other than tensors and "
                            "numbers, and loading them could run code.") from None
    except Exception as exc:
        raise CracknetError(f"The checkpoint {path} is damaged ({type(exc).__name__}); "
                            "pass --overwrite to start afresh.") from None
    if not isinstance(state, dict) or not {"model", "epoch"} <= set(state):
        raise CracknetError(f"{path} is not a cracknet training checkpoint.")
    return state


def train_loop_per_worker(config: dict) -> dict | None:
    """The Ray Train loop: unpack, build, resume, train, report; rank 0 returns predictions."""
    import ray.train
    import ray.train.torch

    cfg: TrainConfig = config["cfg"]
    spec: Preprocessing = config["spec"]
    steps_per_epoch: int = config["steps_per_epoch"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    precision = Precision.for_training(device, allow_bf16=not cfg.fp32)
    torch.manual_seed(cfg.seed)

    module = build_model()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state = _load_state(checkpoint)
        module.load_state_dict(state["model"])
        start_epoch, history, restarts = state["epoch"], state["history"], state["restarts"] + 1
        best = _best_of(state)
    else:
        state, best = None, None
        if cfg.base_model:
            # The base model the driver read and the card names, not one put in its place since.
            module.load_state_dict(load_artifact(cfg.base_model, model_id=config["base_model_id"])[0].state_dict())
        else:
            load_starting_weights(module, cfg.weights)
        start_epoch, history, restarts = 0, [], 0
    if precision.channels_last:
        module = module.to(memory_format=torch.channels_last)

    head_epochs, _ = cfg.stage_epochs
    train_shard = ray.train.get_dataset_shard("train")
    model = optimizer = stage = None
    for epoch in range(start_epoch, cfg.epochs):
        epoch_stage = "head" if epoch < head_epochs else "all"
        if epoch_stage != stage:
            # DDP must be built after requires_grad is set, so each stage wraps afresh.
            model = None
            set_backbone_trainable(module, epoch_stage == "all")
            model = ray.train.torch.prepare_model(module)
            optimizer = _optimizer(module, cfg, epoch_stage)
            if state is not None and state["stage"] == epoch_stage:
                optimizer.load_state_dict(state["optimizer"])
            stage = epoch_stage
        first, length = (0, head_epochs) if stage == "head" else (head_epochs, cfg.epochs - head_epochs)
        peak = cfg.finetune_lr if stage == "all" and cfg.pretrained else cfg.lr
        warmup = min(cfg.warmup_epochs, length)

        def lr_for_step(step: int, epoch=epoch, first=first, length=length, peak=peak, warmup=warmup) -> float:
            return lr_at(epoch - first + min(step + 1, steps_per_epoch) / steps_per_epoch, length, warmup, peak)

        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + rank)
        batches = train_shard.iter_torch_batches(
            batch_size=cfg.batch_size, drop_last=True,
            local_shuffle_buffer_size=cfg.batch_size * 8, local_shuffle_seed=cfg.seed + epoch * 97 + rank,
        )
        started = time.monotonic()
        loss_sum, seen, right = train_one_epoch(model, batches, optimizer, spec, device, generator, lr_for_step,
                                                precision, backbone_frozen=(stage == "head"),
                                                strong_augmentation=cfg.strong_augmentation)
        train_seconds = time.monotonic() - started
        totals = _gather((loss_sum, seen, right))
        val_probs, val_labels = predict_shared(module, _batches(ray.train.get_dataset_shard("val"), cfg), spec,
                                               device, rank, world)
        val = binary_metrics(val_probs, val_labels)
        metrics = {
            "epoch": epoch + 1,
            "stage": stage,
            "train_loss": sum(t[0] for t in totals) / max(1, sum(t[1] for t in totals)),
            "train_images": sum(t[1] for t in totals),
            "train_accuracy": sum(t[2] for t in totals) / max(1, sum(t[1] for t in totals)),
            "val_loss": log_loss(val_probs, val_labels),
            **{f"val_{k}": val[k] for k in ("accuracy", "precision", "recall", "f1", "roc_auc")},
            "lr": lr_for_step(steps_per_epoch - 1),
            "images_per_second": sum(t[1] for t in totals) / max(train_seconds, 1e-9),
            "seconds": time.monotonic() - started,
        }
        history.append(metrics)
        if cfg.keep_best and (best is None or metrics["val_loss"] < best["val_loss"]):
            best = {"epoch": epoch + 1, "val_loss": metrics["val_loss"],
                    "model": {k: v.detach().clone() for k, v in module.state_dict().items()}}
        if rank == 0 and config.get("progress") is not None:
            _tell(config["progress"], epoch_line(metrics, cfg.epochs))
        with tempfile.TemporaryDirectory() as folder:
            saved = None
            if rank == 0:
                torch.save({"model": module.state_dict(), "optimizer": optimizer.state_dict(), "stage": stage,
                            "epoch": epoch + 1, "history": history, "restarts": restarts,
                            # The kept epoch's weights, unless they are this epoch's (then "model" holds them).
                            "best": best if best is None or best["epoch"] != epoch + 1 else {**best, "model": None}},
                           os.path.join(folder, STATE_FILE))
                saved = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=saved, checkpoint_dir_name=f"epoch-{epoch + 1:04d}",
                             checkpoint_upload_fn=functools.partial(upload_checkpoint, like=cfg.output))
        state = None

    if model is None:  # resumed after the last epoch: only the final predictions are left to do
        module.to(device)
    if best is not None:  # the kept epoch's weights are the ones tested and saved
        module.load_state_dict(best["model"])
    val = predict_shared(module, _batches(ray.train.get_dataset_shard("val"), cfg), spec, device, rank, world)
    test = predict_shared(module, _batches(ray.train.get_dataset_shard("test"), cfg), spec, device, rank, world)
    if rank != 0:
        return None
    return {"val": val, "test": test, "history": history, "restarts": restarts}


def epoch_line(m: dict, epochs: int) -> str:
    """The one console line of an epoch."""
    return (f"Epoch {m['epoch']}/{epochs} ({m['stage']}): train loss {m['train_loss']:.4f}, validation accuracy "
            f"{m['val_accuracy']:.4f}, recall {m['val_recall']:.4f}, AUC {m['val_roc_auc']:.4f}; "
            f"{m['images_per_second']:.0f} images/s, {m['seconds']:.0f} s")


# ---------------------------------------------------------------------------
# On the driver


def _tell(queue, line: str) -> None:
    """Hand an epoch line to the driver. The line is only for the console: a queue that is gone (its node was
    lost) must not fail the training run, or every restart would fail again on it."""
    try:
        queue.put(line, timeout=10)
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


def _relay(queue, log: Callable[[str], None], done: threading.Event) -> None:
    """Print the workers' epoch lines on the driver as they come (clean lines, no Ray prefixes)."""
    from ray.util.queue import Empty

    while True:
        try:
            log(queue.get(timeout=0.5))
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


def run_training(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict:
    """Train, test and write ``<output>/model/``; returns the model card."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    started = time.monotonic()
    # Ray Train runs each worker in a folder of its own: local paths must not depend on the working directory.
    weights = cfg.weights if cfg.weights in ("imagenet", "none") else storage.absolute(cfg.weights)
    base = read_card(storage.absolute(cfg.base_model)) if cfg.base_model else None
    cfg = dataclasses.replace(cfg, data=storage.absolute(cfg.data), output=storage.absolute(cfg.output),
                              weights=weights, base_model=base["folder"] if base else None)
    images = discover(cfg.data)
    cfg = dataclasses.replace(cfg, image_size=cfg.image_size or default_image_size(base, images))
    # Adapting keeps the base model's normalisation; the network is size-agnostic, so the size may change.
    spec = dataclasses.replace(preprocessing_of(base), image_size=cfg.image_size) if base else \
        Preprocessing(cfg.image_size)
    cfg = dataclasses.replace(cfg, group_by=resolve_grouping(cfg.group_by, cfg.data, images))
    if base is None:
        _check_weights(cfg.weights)
    model_dir, checkpoints = _check_output(cfg)
    log(f"Found {len(images)} labelled images under {cfg.data}.")
    warning = ungrouped_tiles(cfg.data, images) if cfg.group_by == NO_GROUPS else ""
    if warning:
        log(f"Warning: {warning}")

    ensure_ray(cfg.ray_address, min_cpus=cfg.num_workers * cfg.cpus_per_worker, verbose=cfg.verbose)
    decoded, plan = load_labelled(images, cfg.data, spec, cfg.val_fraction, cfg.test_fraction,
                                  cfg.max_bad_fraction, cfg.seed, cfg.group_by)
    by = "by content hash" if cfg.group_by == NO_GROUPS else \
        f"by group ({cfg.group_by}; groups {json.dumps(plan.group_counts())})"
    log(f"Split {by}: {json.dumps(plan.counts)}; {plan.duplicates} duplicate copies and "
        f"{plan.conflicts} images with conflicting labels dropped, {len(plan.unreadable)} unreadable skipped.")
    n_train = len(plan.members["train"])
    cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size or batch_size_for(n_train, cfg.num_workers))
    steps_per_epoch = n_train // (cfg.num_workers * cfg.batch_size)
    if steps_per_epoch < 1:
        raise CracknetError(
            f"The train split holds {n_train} images, fewer than one batch per worker "
            f"({cfg.num_workers} x {cfg.batch_size}); lower --batch-size or --num-workers."
        )

    fs, path = storage.resolve(checkpoints)
    progress = Queue(actor_options=_beside_the_driver())
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg, "spec": spec, "steps_per_epoch": steps_per_epoch, "progress": progress,
                           "base_model_id": base["model_id"] if base else None},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name=RUN_NAME, storage_path=path, storage_filesystem=fs,
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             logging_config=LoggingConfig(log_level=train_log_level(cfg.verbose))),
        datasets=split_datasets(decoded, plan),
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    done = threading.Event()
    relay = threading.Thread(target=_relay, args=(progress, log, done), daemon=True)
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
    out = result.return_value
    state = _load_state(result.checkpoint)
    kept = _best_of(state) or {"epoch": state["epoch"], "model": state["model"]}

    (val_probs, val_labels), (test_probs, test_labels) = out["val"], out["test"]
    point = operating_point(val_probs, val_labels, cfg.target_recall, cfg.recall_confidence, cfg.max_false_alarms)
    threshold = point.pop("threshold")
    point.pop("recall")  # the same as val_recall below
    at_threshold = binary_metrics(val_probs, val_labels, threshold)
    at_half = binary_metrics(val_probs, val_labels, 0.5)
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("overwrite", "ray_address", "verbose")}
    card = {
        "format_version": 1,
        "class_names": list(CLASS_NAMES),
        "positive_class": CLASS_NAMES[1],
        "preprocessing": {**dataclasses.asdict(spec), "source_size": cfg.source_size or plan.typical_side,
                          "resize": "bilinear, whole image to a square",
                          "colour": "RGB, EXIF orientation applied"},
        "threshold": threshold,
        "threshold_rule": threshold_rule(cfg.target_recall, cfg.recall_confidence, cfg.max_false_alarms),
        "operating_point": {**point, "val_recall": at_threshold["recall"], "val_precision": at_threshold["precision"],
                            "val_recall_at_0.5": at_half["recall"], "val_precision_at_0.5": at_half["precision"]},
        "metrics": {
            "test": evaluation(test_probs, test_labels, threshold, seed=cfg.seed),
            "test_at_0.5": binary_metrics(test_probs, test_labels, 0.5),
            "val": at_threshold,
        },
        "data": {"uri": cfg.data, **plan.summary()},
        "training": {**settings, "epochs_completed": state["epoch"], "kept_epoch": kept["epoch"],
                     "restarts": out["restarts"], "history": out["history"],
                     "seconds": round(time.monotonic() - started, 1), "checkpoints": checkpoints},
        "versions": _versions(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if base is not None:
        card["lineage"] = lineage(base, _base_on_test(base, images, plan, cfg.data, cfg.batch_size))
    card = save_artifact(model_dir, kept["model"], card)
    return {**card, "folder": model_dir}


def lineage(base: dict, on_test: dict) -> dict:
    """Where an adapted model came from: the base model, what it was trained on (and its own lineage), and
    how it did on this run's test split before adaptation, at its own threshold."""
    return {"base_model": {"uri": base["folder"], "model_id": base["model_id"],
                           "data_uri": base.get("data", {}).get("uri"),
                           "data_fingerprint": base.get("data", {}).get("fingerprint"),
                           "threshold": base["threshold"], "image_size": base["preprocessing"]["image_size"],
                           "lineage": base.get("lineage")},
            "base_model_on_test": on_test}


def _base_on_test(base: dict, images: list, plan, data: str, batch_size: int) -> dict:
    """The base model's metrics on this run's test split, scored as the nightly job would score them."""
    from cracknet.scorer import Scorer

    labels = {image.uri: image.label for image in images}
    uris = sorted(storage.to_uri(path, data) for path in plan.members["test"])  # members: filesystem paths
    scorer = Scorer.load(base["folder"], batch_tiles=batch_size, model_id=base["model_id"])
    found = [p for start in range(0, len(uris), 256) for p in scorer.predict(uris[start:start + 256]) if not p.error]
    probs = np.array([p.crack_probability for p in found])
    truth = np.array([labels[p.source] for p in found])
    return binary_metrics(probs, truth, base["threshold"])

