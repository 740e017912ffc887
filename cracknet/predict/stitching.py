"""From tile masks to a photo's mask and its cracks, the way scoring draws them.

    photo = stitch(tile_probs, boxes, width, height)  # overlapping tiles' maps -> one map of the photo
    mask, cracks = photo_cracks({i: map}, boxes, width, height, card["mask"]["threshold"])  # the photo's cracks

Tiles overlap; their maps are averaged with weights that fall towards a tile's edges, so seams do not show
as cracks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def stitch(tile_probs: torch.Tensor, boxes, width: int, height: int) -> torch.Tensor:
    """One probability map of a photo from its tiles' maps (T, h, w) at the model's size and their boxes
    (x, y, w, h) in the photo's pixels (as ``decoding.tile_boxes`` cuts them): each map is resized to its
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
    card names one (``geometry.choose_width_threshold``). At a scale too coarse to tell the first width class
    from the next (``images.scale.too_coarse``) the cracks keep their millimetres but get no severity.
    (None, []) where no tile was decoded."""
    from cracknet.images.scale import too_coarse
    from cracknet.measure.geometry import AASHTO_RC, measure

    if not tile_maps:
        return None, []
    classes = classes or AASHTO_RC
    probs = photo_probabilities(tile_maps, boxes, width, height)
    mask = probs >= threshold
    strict = probs >= width_threshold if width_threshold is not None and width_threshold > threshold else None
    cracks = measure(mask, mm_per_pixel, classes, width_mask=strict)
    if too_coarse(mm_per_pixel, classes):
        cracks = [{**crack, "severity": None} for crack in cracks]
    return mask, cracks


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
