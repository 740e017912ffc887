"""Ray Data ingest for training: read, hash and decode once, then split by content hash.

    decoded, plan = load_labelled(images, root, spec, cfg)   # on the driver
    splits = split_datasets(decoded, plan)                   # {"train": ds, "val": ds, "test": ds}

Decoding runs in Ray Data CPU tasks with the shared preprocessing (masks, where
the tree has them, at the model's size beside their images); the decoded
uint8 images are materialised once in the object store (at the training scale
they are small), so training epochs never decode again. The per-batch
functions are plain module-level functions, testable without Ray.
"""

from __future__ import annotations

import random

import numpy as np

from cracknet import storage
from cracknet.data import NO_GROUPS, LabelledImage, SplitPlan, content_hash, grouper, label_of, plan_splits
from cracknet.errors import CracknetError, StorageUnavailable
from cracknet.transforms import ImageError, Preprocessing, decode, mask_at, open_image, read_mask

DECODE_BATCH = 32


def decode_batch(batch: dict, spec: Preprocessing, root: str, masks: dict[str, str] | None = None) -> dict:
    """Bytes rows -> path, label, sha256, side (longest, in source pixels), image (uint8 S x S x 3), error.

    With ``masks`` (image path -> its mask's URI; given for a model with a mask decoder) also ``mask`` (uint8
    S x S, the crack share of each pixel: ``transforms.mask_at``) and ``has_mask``: a masked image is labelled by
    its mask; in a tree with masks a no_crack image is an exact all-background mask; a crack image without one,
    and any image of a tree without masks, trains only the crack head."""
    size = spec.image_size
    n = len(batch["path"])
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    labels = np.zeros(n, dtype=np.int64)
    sides = np.zeros(n, dtype=np.int64)
    pixels = np.zeros((n, size, size), dtype=np.uint8) if masks is not None else None
    known = np.zeros(n, dtype=bool)
    hashes, errors = [], []
    for i, (path, data) in enumerate(zip(batch["path"], batch["bytes"])):
        hashes.append(content_hash(data))
        try:
            shape = open_image(data, spec.max_pixels).size
            sides[i] = max(shape)
            images[i] = decode(data, spec)
            if masks is not None and path in masks:
                mask = load_mask(masks[path], shape, spec.max_pixels)
                labels[i], pixels[i], known[i] = int(mask.any()), mask_at(mask, size), True
            else:
                labels[i] = label_of(root, path)
                known[i] = bool(masks) and labels[i] == 0  # in a tree with masks: an exact all-background one
            errors.append("")
        except ImageError as exc:
            errors.append(str(exc))
    decoded = {
        "path": np.asarray(batch["path"], dtype=object),
        "label": labels,
        "sha256": np.asarray(hashes, dtype=object),
        "side": sides,
        "image": images,
        "error": np.asarray(errors, dtype=object),
    }
    if pixels is not None:
        decoded.update(mask=pixels, has_mask=known)
    return decoded


def load_mask(uri: str, shape: tuple[int, int], max_pixels: int) -> np.ndarray:
    """An image's mask (bool H x W), refused in a sentence (an ``ImageError``) where it cannot be read or is not
    the photo's size (width, height)."""
    try:
        mask = read_mask(storage.read_bytes(uri), max_pixels)
    except StorageUnavailable:
        raise  # the store, not the mask: the read task is retried
    except CracknetError as exc:  # ImageError included
        raise ImageError(f"its mask {uri} cannot be used ({exc})") from None
    if (mask.shape[1], mask.shape[0]) != tuple(shape):
        raise ImageError(f"its mask {uri} is {mask.shape[1]}x{mask.shape[0]} pixels and the image "
                         f"{shape[0]}x{shape[1]}; a mask must have the photo's size.")
    return mask


def select_split(batch: dict, members: dict[str, int]) -> dict:
    """Keep the rows of one split, with their index in it (for exact sharded evaluation), and masks if any."""
    keep = [i for i, path in enumerate(batch["path"]) if path in members]
    rows = {
        "image": batch["image"][keep],
        "label": batch["label"][keep],
        "idx": np.asarray([members[batch["path"][i]] for i in keep], dtype=np.int64),
    }
    if "mask" in batch:
        rows.update(mask=batch["mask"][keep], has_mask=batch["has_mask"][keep])
    return rows


def load_labelled(images: list[LabelledImage], root: str, spec: Preprocessing,
                  val_fraction: float, test_fraction: float, max_bad_fraction: float, seed: int = 0,
                  grouping: str = NO_GROUPS, segmenter: bool = False):
    """Read and decode every image in Ray Data; plan the split on the driver (by ``grouping``, resolved:
    see ``data.resolve_grouping``). For a ``segmenter``, with the masks (``decode_batch``).

    The files are read in a seeded random order: listed in folder order, every
    block would hold one class, and even a local shuffle buffer would then feed
    the model long single-class runs (which wrecks BatchNorm statistics).
    """
    import ray.data

    fs, root_path = storage.resolve(root)
    paths = [storage.resolve(image.uri)[1] for image in images]
    masks = {storage.resolve(image.uri)[1]: image.mask for image in images if image.mask} if segmenter else None
    random.Random(seed).shuffle(paths)
    decoded = (
        ray.data.read_binary_files(paths, filesystem=fs, include_paths=True)
        .map_batches(decode_batch, fn_kwargs={"spec": spec, "root": root_path, "masks": masks},
                     batch_size=DECODE_BATCH, batch_format="numpy")
        .materialize()
    )
    rows = decoded.select_columns(["path", "label", "sha256", "side", "error"]).iter_rows()
    plan = plan_splits(rows, val_fraction, test_fraction, max_bad_fraction, grouper(grouping, root_path), grouping)
    return decoded, plan


def split_datasets(decoded, plan: SplitPlan) -> dict:
    splits = {
        split: decoded.map_batches(select_split, fn_kwargs={"members": members},
                                   batch_format="numpy").materialize()
        for split, members in plan.members.items()
    }
    # A new block order every epoch; workers add a local shuffle within their stream.
    splits["train"] = splits["train"].randomize_block_order()
    return splits
