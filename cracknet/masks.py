"""Crack masks from the same ResNet50: a light decoder over the encoder's stages, and the loss it learns with.

    model = CrackSegmenter(build_model())          # the classifier, unchanged, plus the decoder
    crack_logit, mask_logits = model(x)            # x: (B, 3, H, W) -> (B,), (B, 1, H, W)
    loss = mask_loss(mask_logits, masks)           # masks: (B, 1, H, W) in {0, 1}
    photo = stitch(tile_probs, boxes, width, height)  # overlapping tiles' maps -> one map of the photo
    mask, cracks = photo_cracks({i: map}, boxes, width, height, card["mask"]["threshold"])  # the photo's cracks

One forward pass: the ResNet50 encoder feeds its crack / no-crack head (the
same ``fc`` on the same pooled features, so the classifier's logit is exactly
the classifier's) and a feature-pyramid decoder over the stem and layers 1-4
(strides 2 to 32), each stage reduced to ``DECODER_CHANNELS`` by a 1x1 conv and
added to the coarser one upsampled. Thin cracks need resolution the encoder does
not keep: the pyramid ends at half resolution, where a crack 2 source pixels wide
is still a pixel, and a shallow full-resolution branch on the image itself joins
it before the last conv, so the mask comes out at the input's own size.

The loss is made for thin structures (cracks are 1-5% of pixels): binary cross
entropy plus soft Dice over the batch, so that an all-background answer is not a
good one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DECODER_CHANNELS = 64
FULL_RESOLUTION_CHANNELS = 16
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
STAGE_CHANNELS = {"stem": 64, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}


class CrackSegmenter(nn.Module):
    """A torchvision ResNet50 classifier (as ``model.build_model`` makes it) with a mask decoder beside its head."""

    def __init__(self, classifier: nn.Module, channels: int = DECODER_CHANNELS):
        super().__init__()
        self.classifier = classifier
        self.lateral = nn.ModuleDict({name: nn.Conv2d(STAGE_CHANNELS[name], channels, 1) for name in STAGES})
        self.smooth = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels),
                                    nn.ReLU(inplace=True))
        self.full = nn.Sequential(  # the image at full resolution: where a 2 px crack is
            nn.Conv2d(3, FULL_RESOLUTION_CHANNELS, 3, padding=1), nn.BatchNorm2d(FULL_RESOLUTION_CHANNELS),
            nn.ReLU(inplace=True),
            nn.Conv2d(FULL_RESOLUTION_CHANNELS, FULL_RESOLUTION_CHANNELS, 3, padding=1),
            nn.BatchNorm2d(FULL_RESOLUTION_CHANNELS), nn.ReLU(inplace=True))
        self.head = nn.Sequential(
            nn.Conv2d(channels + FULL_RESOLUTION_CHANNELS, channels, 3, padding=1), nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True), nn.Conv2d(channels, 1, 1))

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The encoder's stages: stem (stride 2), layer1 (4), layer2 (8), layer3 (16), layer4 (32)."""
        c = self.classifier
        stem = c.relu(c.bn1(c.conv1(x)))
        layer1 = c.layer1(c.maxpool(stem))
        layer2 = c.layer2(layer1)
        layer3 = c.layer3(layer2)
        return {"stem": stem, "layer1": layer1, "layer2": layer2, "layer3": layer3, "layer4": c.layer4(layer3)}

    def crack_logit(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        c = self.classifier
        return c.fc(torch.flatten(c.avgpool(features["layer4"]), 1)).squeeze(1)

    def decode(self, x: torch.Tensor, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mask logits at the input's size, (B, 1, H, W)."""
        top = None
        for name in reversed(STAGES):  # layer4 down to the stem
            lateral = self.lateral[name](features[name])
            top = lateral if top is None else lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
        half = self.smooth(top)
        up = F.interpolate(half, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(torch.cat([up, self.full(x)], dim=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encode(x)
        return self.crack_logit(features), self.decode(x, features)


def mask_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """Binary cross entropy plus soft Dice over the batch (1 - 2|P∩T| / (|P| + |T|), smoothed by 1 pixel)."""
    target = target.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probs = torch.sigmoid(logits)
    dice = 1 - (2 * (probs * target).sum() + 1) / (probs.sum() + target.sum() + 1)
    return bce + dice_weight * dice


def stitch(tile_probs: torch.Tensor, boxes, width: int, height: int) -> torch.Tensor:
    """One probability map of a photo from its tiles' maps (T, h, w) at the model's size and their boxes
    (x, y, w, h) in the photo's pixels (as ``transforms.tile_boxes`` cuts them): each map is resized to its
    box and overlaps are averaged with weights that fall towards a tile's edges, where it saw least context,
    so no seam shows where tiles meet. Pixels no tile covers are 0."""
    total = torch.zeros(height, width)
    weight = torch.zeros(height, width)
    for probs, (x, y, w, h) in zip(tile_probs, boxes):
        x, y, w, h = int(x), int(y), int(w), int(h)
        resized = F.interpolate(probs[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        ramp = torch.minimum(_ramp(h)[:, None], _ramp(w)[None, :])
        total[y:y + h, x:x + w] += resized * ramp
        weight[y:y + h, x:x + w] += ramp
    return torch.where(weight > 0, total / weight.clamp_min(1e-12), torch.zeros_like(total))


def photo_cracks(tile_maps: dict, boxes, width: int, height: int, threshold: float, width_threshold=None,
                 mm_per_pixel=None, classes=None) -> tuple:
    """A photo's crack mask, bool (H, W), from the maps of its tiles that were decoded (``Scorer.score_masks``:
    {tile index: (S, S) probabilities}) and all its tiles' boxes: stitched, then cut at the model's mask
    threshold (pixels only undecoded tiles cover are background: the classifier saw no crack there); and its
    cracks by ``geometry.measure``, their widths read from the stricter ``width_threshold`` cut where the model's
    card names one (``geometry.choose_width_threshold``). (None, []) where no tile was decoded."""
    from cracknet.geometry import AASHTO_RC, measure

    if not tile_maps:
        return None, []
    probs = photo_probabilities(tile_maps, boxes, width, height)
    mask = probs >= threshold
    strict = probs >= width_threshold if width_threshold is not None and width_threshold > threshold else None
    return mask, measure(mask, mm_per_pixel, classes or AASHTO_RC, width_mask=strict)


def photo_probabilities(tile_maps: dict, boxes, width: int, height: int):
    """A photo's stitched crack probabilities, float32 (H, W), 0 where no tile was decoded."""
    import numpy as np

    if not tile_maps:
        return np.zeros((height, width), dtype=np.float32)
    chosen = sorted(tile_maps)
    return stitch(torch.stack([torch.as_tensor(tile_maps[i]) for i in chosen]), [boxes[i] for i in chosen],
                  width, height).numpy()


def _ramp(n: int) -> torch.Tensor:
    """1 in the middle, falling linearly to a small weight at both ends (never 0: a photo's edge is covered)."""
    i = torch.arange(n, dtype=torch.float32)
    return torch.clamp(torch.minimum(i + 1, n - i) / max(n / 4, 1), 0.05, 1.0)
