"""Labelled image trees: finding the images, their labels and their masks.

A labelled tree looks like ``<root>/<label>/.../<image>``, at a local path or
``s3://bucket/prefix``. Labels are ``crack`` / ``no_crack`` (also the common
``Positive`` / ``Negative``); images are jpg, jpeg, png or tif, in any case.

A mask tree holds ``<root>/images/.../<name>.<ext>`` and, for each, a crack mask
``<root>/masks/.../<name>.<png|bmp|jpg|tif>`` (same folders, same stem, the
photo's size; non-zero pixels are crack, above half-grey for JPEG masks). An
image's label is then whether its mask shows any crack. Label folders may sit
beside ``images/`` and ``masks/`` (a mixed tree): their images train the crack
/ no-crack head, and a no_crack image is an exact all-background mask.

    images = discover("../shared/data/metu-dev")

Which images travel together and which split they land in is ``cracknet.data.splits``.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from dataclasses import dataclass
from typing import Optional

from cracknet import storage
from cracknet.errors import CracknetError

CLASS_NAMES = ("no_crack", "crack")
LABELS = {
    "crack": 1, "cracks": 1, "positive": 1, "cracked": 1,
    "no_crack": 0, "nocrack": 0, "no-crack": 0, "no crack": 0, "negative": 0, "uncracked": 0,
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
MASK_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
IMAGES, MASKS = "images", "masks"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LabelledImage:
    """An image of a labelled or mask tree; ``label`` is None for a masked image (its mask decides it)."""
    uri: str
    label: int | None
    mask: str | None = None


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def relative_parts(root: str, uri: str) -> list[str]:
    rel = posixpath.relpath(uri.replace("\\", "/"), root.replace("\\", "/").rstrip("/"))
    return rel.split("/")


def label_of(root: str, uri: str) -> Optional[int]:
    """The label of an image from its top folder under ``root``; None if unknown."""
    parts = relative_parts(root, uri)
    return LABELS.get(parts[0].strip().lower()) if len(parts) > 1 else None


def discover(root: str, require_both_classes: bool = True) -> list[LabelledImage]:
    """Every image in a labelled, mask or mixed tree, with its label or mask; refuses trees it cannot train on."""
    listed = storage.list_files(root)
    files = [uri for uri in listed if is_image_name(uri)]
    if not files:
        raise CracknetError(
            f"No images (jpg, jpeg, png, tif) were found under {root}; "
            f"expected {root}/crack/... and {root}/no_crack/... (or {root}/images/... with {root}/masks/...)."
        )
    top = {uri: relative_parts(root, uri)[0] for uri in listed}
    masked = pair_masks(root, [uri for uri in files if top[uri] == IMAGES],
                        [uri for uri in listed if top[uri] == MASKS]) if IMAGES in top.values() else []
    images, unknown = list(masked), Counter()
    for uri in files:
        if top[uri] in (IMAGES, MASKS) and masked:
            continue
        label = label_of(root, uri)
        if label is None:
            parts = relative_parts(root, uri)
            unknown[parts[0] if len(parts) > 1 else "(no folder)"] += 1
        else:
            images.append(LabelledImage(uri, label))
    if unknown:
        names = ", ".join(f"{name!r} ({n} images)" for name, n in sorted(unknown.items()))
        raise CracknetError(
            f"{root} holds images under folders that are not labels: {names}; "
            "the label folders are crack and no_crack (or Positive and Negative)."
        )
    present = {image.label for image in images}
    if require_both_classes and len(present) < 2 and None not in present:
        raise CracknetError(
            f"{root} holds only {CLASS_NAMES[present.pop()]} images; training needs both crack and no_crack."
        )
    return images


def _stem(rel: str) -> str:
    return rel.rsplit(".", 1)[0]


def pair_masks(root: str, image_uris: list[str], mask_uris: list[str]) -> list[LabelledImage]:
    """The images under ``<root>/images`` with their masks under ``<root>/masks`` (same folders and stem)."""
    base = root.rstrip("/")
    masks: dict[str, str] = {}
    for uri in mask_uris:
        if uri.lower().endswith(MASK_EXTENSIONS):
            stem = _stem(storage.relative(uri, storage.join(base, MASKS)))
            if stem in masks:
                raise CracknetError(f"{masks[stem]} and {uri} are two masks for one image; keep one.")
            masks[stem] = uri
    if not masks:
        raise CracknetError(f"{root}/images holds images but {root}/masks holds no masks (png, bmp, jpg, tif); "
                            "each image needs its mask, an all-black one where it shows no crack.")
    found, missing = [], []
    for uri in image_uris:
        mask = masks.get(_stem(storage.relative(uri, storage.join(base, IMAGES))))
        if mask is None:
            missing.append(uri)
        else:
            found.append(LabelledImage(uri, None, mask))
    if missing:
        raise CracknetError(f"{len(missing)} of {len(image_uris)} images under {root}/images have no mask under "
                            f"{root}/masks with the same folders and stem (e.g. {missing[0]}); give each its mask "
                            "(all black where it shows no crack) or move it under crack/ or no_crack/.")
    return found


def has_masks(images: list[LabelledImage]) -> bool:
    return any(image.mask for image in images)


