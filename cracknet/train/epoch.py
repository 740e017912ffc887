"""One epoch of training, and prediction, as plain functions (no Ray in here).

    loss_sum, seen, right = train_one_epoch(model, batches, optimizer, spec, device, generator, lr_for_step)

``batches`` is any iterable of dicts with ``image`` (uint8 N x S x S x 3) and
``label`` tensors (and, for a model with a mask decoder, ``mask`` uint8 N x S x S
and ``has_mask``), so the same code runs under Ray Train, in a plain loop, and
in tests. On a GPU, ``Precision`` turns on bf16 autocast and channels_last.
Prediction lives in ``cracknet.predict.scorer``: validation scores exactly as the nightly job.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cracknet.images.augmentation import train_preset, train_preset_masked
from cracknet.images.decoding import Preprocessing
from cracknet.model.masks import CrackSegmenter, mask_loss
from cracknet.model.precision import Precision


def lr_at(progress: float, total: float, warmup: float, peak: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup``, then cosine decay to zero at ``total`` (all in epochs)."""
    if warmup > 0 and progress < warmup:
        return peak * progress / warmup
    span = max(total - warmup, 1e-9)
    t = min(max((progress - warmup) / span, 0.0), 1.0)
    return peak * 0.5 * (1.0 + math.cos(math.pi * t))


def freeze_batchnorm(model: nn.Module) -> None:
    """Keep BatchNorm running statistics fixed (a frozen backbone must not drift)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[dict],
    optimizer: torch.optim.Optimizer,
    spec: Preprocessing,
    device: torch.device,
    generator: torch.Generator,
    lr_for_step: Callable[[int], float],
    precision: Precision = Precision(),
    backbone_frozen: bool = False,
    strong_augmentation: bool = False,
) -> tuple[float, int, int]:
    """Train over ``batches``; returns (summed loss, images seen, images right at 0.5) on the augmented inputs.

    A model with a mask decoder learns both at once: the crack head's cross entropy plus ``masks.mask_loss`` over
    the images of the batch that have a mask."""
    model.train()
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if backbone_frozen:
        freeze_batchnorm(module.classifier if isinstance(module, CrackSegmenter) else module)
    loss_sum, seen, right = 0.0, 0, 0
    for step, batch in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = lr_for_step(step)
        images = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True).float()
        if isinstance(module, CrackSegmenter):
            x, masks = train_preset_masked(images, batch["mask"].to(device, non_blocking=True), spec, generator,
                                           strong_augmentation)
            with precision.autocast(device):
                logits, mask_logits = model(precision.inputs(x))
            loss = F.binary_cross_entropy_with_logits(logits.float(), y)
            known = batch["has_mask"].to(device).bool()
            # Every batch runs the decoder (DDP needs each parameter used); one without masks adds nothing.
            loss = loss + (mask_loss(mask_logits[known].float(), masks[known]) if bool(known.any())
                           else 0.0 * mask_logits.sum())
        else:
            x = precision.inputs(train_preset(images, spec, generator, strong_augmentation))
            with precision.autocast(device):
                logits = model(x).squeeze(1)
            loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(y)
        seen += len(y)
        right += int(((logits.detach() > 0) == (y > 0.5)).sum())
    return loss_sum, seen, right


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities (clipped away from 0 and 1)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if len(p) else float("nan")
