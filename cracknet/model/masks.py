"""Crack masks from the same ResNet50: a light decoder over the encoder's stages, and the loss it learns with.

    model = CrackSegmenter(build_model())          # the classifier, unchanged, plus the decoder
    crack_logit, mask_logits = model(x)            # x: (B, 3, H, W) -> (B,), (B, 1, H, W)
    loss = mask_loss(mask_logits, masks)           # masks: (B, 1, H, W) in {0, 1}

Joining tile maps into a photo's mask is ``cracknet.predict.stitching``.

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
    """A torchvision ResNet50 classifier (as ``network.build_model`` makes it) with a mask decoder beside its head."""

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


