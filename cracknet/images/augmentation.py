"""Training-only augmentation: flips, quarter turns, zoom and photographic degradations, on uint8 batches.

    x = train_preset(images, spec, generator)           # normalised float tensors, ready for the network

Evaluation and scoring never augment; they use ``decoding.eval_preset``.
"""

from __future__ import annotations

import torch

from cracknet.images.decoding import Preprocessing, normalise, to_float


def augment(x: torch.Tensor, generator: torch.Generator, strong: bool = False,
            masks: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Random label-preserving changes for crack patches; x is float (N, 3, S, S) in [0, 1]. With ``masks``
    (float (N, 1, S, S)), they take the same flips, turns and zoom, and (x, masks) is returned.

    Cracks have no preferred orientation, so flips and 90 degree turns are free
    data; brightness/contrast jitter covers lighting; a small zoom covers the
    distance of the camera from the wall. ``strong`` (for adapting a model to a
    new surface from few images) covers how survey imagery differs: scale from
    0.7x to 1.7x (crack widths), blur and lost resolution, sensor noise, JPEG
    quality down to 25, grey images and colour casts, wider lighting changes.
    """
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    if masks is not None:  # geometry moves the masks with the image; lighting and camera effects do not touch them
        x = torch.cat([x, masks.to(x.dtype)], dim=1)

    def draw(*shape):
        return torch.rand(*shape, generator=generator, device="cpu").to(x.device)

    flip_h = draw(n) < 0.5
    x = torch.where(flip_h.view(n, 1, 1, 1), x.flip(3), x)
    flip_v = draw(n) < 0.5
    x = torch.where(flip_v.view(n, 1, 1, 1), x.flip(2), x)
    if x.shape[2] == x.shape[3]:
        turns = (draw(n) * 4).long().clamp_(max=3)
        x = torch.stack([torch.rot90(img, int(k), dims=(1, 2)) for img, k in zip(x, turns)])

    # Zoom in by up to 15% around a random centre (strong: from 0.6 to 1.4 of the view, log-uniform;
    # zooming out mirrors the surface at the edges). One affine resample per sample.
    scale = (1.4 * (0.6 / 1.4) ** draw(n)) if strong else 1.0 - 0.15 * draw(n)
    shift = (1.0 - scale).clamp(min=0.0).unsqueeze(1) * (draw(n, 2) * 2 - 1)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if masks is not None:
        x, masks = x[:, :3], x[:, 3:]

    spread = 0.5 if strong else 0.2
    brightness = 1.0 + spread * (draw(n, 1, 1, 1) - 0.5)
    contrast = 1.0 + spread * (draw(n, 1, 1, 1) - 0.5)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean) * brightness
    if strong:
        x = _degrade(x.clamp(0.0, 1.0), draw, generator)
    return x.clamp_(0.0, 1.0) if masks is None else (x.clamp_(0.0, 1.0), masks)


def _degrade(x: torch.Tensor, draw, generator: torch.Generator) -> torch.Tensor:
    """Strong augmentation's camera and storage effects, each on a random share of the batch."""
    import torch
    import torch.nn.functional as F

    n, _, side, _ = x.shape

    def some(p: float) -> list[int]:
        return (draw(n) < p).nonzero().flatten().tolist()

    x = x.clone()
    cast = some(0.5)
    x[cast] = x[cast] * (1.0 + 0.16 * (draw(len(cast), 3, 1, 1) - 0.5))
    grey = some(0.2)
    x[grey] = x[grey].mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    # Camera effects happen at the photo's scale: their size here shrinks with the model input (224 px: as named).
    scale = side / 224
    blur = some(0.3)
    if blur:  # sigma 0.3-1.5 px at 224 px, a separable Gaussian per image
        sigma = (0.3 + 1.2 * draw(len(blur)).view(-1, 1, 1, 1)) * max(scale, 0.25)
        radius = 4
        offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype).view(1, 1, 1, -1)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = (kernel / kernel.sum(-1, keepdim=True)).repeat_interleave(3, 0)
        flat = x[blur].reshape(1, len(blur) * 3, side, side)
        flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel, groups=len(blur) * 3)
        flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel.transpose(2, 3),
                        groups=len(blur) * 3)
        x[blur] = flat.view(len(blur), 3, side, side)
    low = some(0.2)
    if low:  # lost resolution: down by 2 or 3 at 224 px (less at smaller inputs) and back up
        factor = 1.0 + (1.0 + draw(1).item()) * min(scale, 1.0)
        small = F.interpolate(x[low], size=max(8, int(side / factor)), mode="bilinear",
                              antialias=True, align_corners=False)
        x[low] = F.interpolate(small, size=side, mode="bilinear", align_corners=False)
    noisy = some(0.3)
    grain = torch.randn(len(noisy), *x.shape[1:], generator=generator).to(x.device)
    x[noisy] = x[noisy] + 0.06 * draw(len(noisy), 1, 1, 1) * grain  # sensor noise
    coded = some(0.3)
    return _jpeg(x.clamp_(0.0, 1.0), coded, (25 + draw(len(coded)) * 50).long().tolist())


def _jpeg(x: torch.Tensor, picks: list[int], qualities: list[int]) -> torch.Tensor:
    """Re-encode the picked images as JPEG at the given qualities (the real codec: block and ringing artefacts)."""
    import torch
    from torchvision.io import decode_jpeg, encode_jpeg

    if not picks:
        return x
    pixels = (x[picks].cpu() * 255).round().to(torch.uint8)
    coded = [decode_jpeg(encode_jpeg(img, quality=q)) for img, q in zip(pixels, qualities)]
    x[picks] = (torch.stack(coded).float() / 255).to(x.device)
    return x


def train_preset(images: torch.Tensor, spec: Preprocessing, generator: torch.Generator,
                 strong: bool = False) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> augmented, normalised float (N, 3, H, W)."""
    return normalise(augment(to_float(images), generator, strong), spec)


def train_preset_masked(images: torch.Tensor, masks: torch.Tensor, spec: Preprocessing,
                        generator: torch.Generator, strong: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, H, W, 3) and masks (N, H, W, 0-255) -> the augmented, normalised images (N, 3, H, W) and
    their masks moved alike, as crack shares in [0, 1] (N, 1, H, W)."""
    x, m = augment(to_float(images), generator, strong, masks=masks.unsqueeze(1).float().div_(255.0))
    return normalise(x, spec), m.clamp_(0.0, 1.0)
