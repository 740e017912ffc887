"""Ray Data ingest for training: read, hash and decode once, then split (by group, else by content hash).

    decoded, plan = load_labelled(images, root, spec, val_fraction=0.15, test_fraction=0.15,
                                  max_bad_fraction=0.01, grouping="photo")   # on the driver
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
from cracknet.data.splits import NO_GROUPS, PHOTO, SplitPlan, grouper, plan_splits
from cracknet.data.trees import LabelledImage, label_of
from cracknet.errors import CracknetError, StorageUnavailable
from cracknet.images.decoding import (ImageError, Preprocessing, decode, decode_tiles, mask_at, mask_tiles,
                                      open_image, read_mask)
from cracknet.storage import content_hash

DECODE_BATCH = 32


def decode_batch(batch: dict, spec: Preprocessing, root: str, masks: dict[str, str] | None = None,
                 crop: int = 0) -> dict:
    """Bytes rows -> path, label, sha256, side (longest, in source pixels), image (uint8 S x S x 3), error.

    With ``masks`` (image path -> its mask's URI; given for a model with a mask decoder) also ``mask`` (uint8
    S x S, the crack share of each pixel: ``decoding.mask_at``) and ``has_mask``: a masked image is labelled by
    its mask; in a tree with masks a no_crack image is an exact all-background mask; a crack image without one,
    and any image of a tree without masks, trains only the crack head.

    With ``crop`` (a side in source pixels), a masked photo is not squashed into one input: it becomes the crops
    the nightly job would score (``decoding.decode_tiles`` with that tile side), one row each, path
    ``<photo>#x,y,w,h`` (``crop_of``), labelled by the crack pixels inside it (``crop_label``)."""
    size = spec.image_size
    rows: dict[str, list] = {key: [] for key in ("path", "label", "sha256", "side", "image", "error", "mask",
                                                   "has_mask")}

    def add(path, label, sha, side, image, error="", mask=None, known=False):
        for key, value in zip(rows, (path, label, sha, side, image, error, mask, known)):
            rows[key].append(value)

    blank_image, blank_mask = np.zeros((size, size, 3), np.uint8), np.zeros((size, size), np.uint8)
    for path, data in zip(batch["path"], batch["bytes"]):
        sha = content_hash(data)
        try:
            shape = open_image(data, spec.max_pixels).size
            if masks is not None and path in masks:
                mask = load_mask(masks[path], shape, spec.max_pixels)
                if crop:
                    width, height, tiles, boxes = decode_tiles(data, spec, crop, CROP_OVERLAP)
                    for tile, share, box in zip(tiles, mask_tiles(mask, boxes, size), boxes):
                        add(crop_path(path, box), crop_label(mask, box, crop), content_hash(f"{sha} {box}".encode()),
                            max(shape), tile, mask=share, known=True)
                    continue
                add(path, int(mask.any()), sha, max(shape), decode(data, spec), mask=mask_at(mask, size), known=True)
            else:
                label = label_of(root, path)
                # in a tree with masks, a no_crack image is an exact all-background mask
                add(path, label, sha, max(shape), decode(data, spec), mask=blank_mask, known=bool(masks) and label == 0)
        except ImageError as exc:
            add(path, 0, sha, 0, blank_image, str(exc), blank_mask)
    decoded = {
        "path": np.asarray(rows["path"], dtype=object),
        "label": np.asarray(rows["label"], dtype=np.int64),
        "sha256": np.asarray(rows["sha256"], dtype=object),
        "side": np.asarray(rows["side"], dtype=np.int64),
        "image": np.stack(rows["image"]) if rows["image"] else np.zeros((0, size, size, 3), np.uint8),
        "error": np.asarray(rows["error"], dtype=object),
    }
    if masks is not None:
        decoded.update(mask=np.stack(rows["mask"]) if rows["mask"] else np.zeros((0, size, size), np.uint8),
                       has_mask=np.asarray(rows["has_mask"], dtype=bool))
    return decoded


CROP_OVERLAP = 0.25  # the nightly job's tile overlap (scorer.DEFAULT_OVERLAP): training crops are its tiles
UNLABELLED = -1  # a crop holding a few crack pixels only: its mask trains the decoder, the head learns nothing from it


def crop_path(path: str, box) -> str:
    """The row name of one crop of a photo: ``<photo>#x,y,w,h`` in the photo's pixels."""
    return f"{path}#{','.join(str(int(v)) for v in box)}"


def crop_of(path: str) -> tuple[str, tuple[int, int, int, int] | None]:
    """(the photo, the box) of a crop's row name; (the path, None) for a whole image."""
    photo, sep, box = path.rpartition("#")
    if not sep or box.count(",") != 3:
        return path, None
    try:
        x, y, w, h = (int(v) for v in box.split(","))
    except ValueError:
        return path, None
    return photo, (x, y, w, h)


def crop_label(mask: np.ndarray, box, crop: int) -> int:
    """A crop is crack where at least an eighth of its side's worth of crack pixels lie in it (a crack crossing it,
    or a real piece of one), no_crack where none do, and ``UNLABELLED`` in between (the tip of a crack in a
    corner, or a label a few pixels off): the head is not taught either answer there."""
    x, y, w, h = (int(v) for v in box)
    pixels = int(mask[y:y + h, x:x + w].sum())
    return 1 if pixels >= max(1, crop // 8) else 0 if pixels == 0 else UNLABELLED


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


def select_split(batch: dict, members: dict[str, int], labelled_only: bool = False) -> dict:
    """Keep the rows of one split, with their index in it (for exact sharded evaluation), and masks if any;
    ``labelled_only`` drops the crops the head is not taught (``UNLABELLED``; for the train split)."""
    keep = [i for i, path in enumerate(batch["path"])
            if path in members and not (labelled_only and batch["label"][i] == UNLABELLED)]
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
                  grouping: str = NO_GROUPS, segmenter: bool = False, crop: int = 0):
    """Read and decode every image in Ray Data; plan the split on the driver (by ``grouping``, resolved:
    see ``splits.resolve_grouping``). For a ``segmenter``, with the masks, and masked photos cut into crops of
    ``crop`` source pixels where it is given (``decode_batch``); the crops of a photo stay in one split.

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
        .map_batches(decode_batch, fn_kwargs={"spec": spec, "root": root_path, "masks": masks, "crop": crop},
                     batch_size=DECODE_BATCH, batch_format="numpy")
        .materialize()
    )
    rows = decoded.select_columns(["path", "label", "sha256", "side", "error"]).iter_rows()
    group_of = grouper(grouping, root_path)
    if crop:  # a crop belongs to its photo's group
        group_of = crop_grouper(group_of or grouper(PHOTO, root_path))
        grouping = grouping if grouping != NO_GROUPS else PHOTO
    plan = plan_splits(rows, val_fraction, test_fraction, max_bad_fraction, group_of, grouping)
    return decoded, plan


def crop_grouper(group_of):
    """The group of a crop's row: its photo's group under ``group_of``."""
    return lambda path: group_of(crop_of(path)[0])


def split_datasets(decoded, plan: SplitPlan) -> dict:
    splits = {
        split: decoded.map_batches(select_split, fn_kwargs={"members": members, "labelled_only": split == "train"},
                                   batch_format="numpy").materialize()
        for split, members in plan.members.items()
    }
    # A new block order every epoch; workers add a local shuffle within their stream.
    splits["train"] = splits["train"].randomize_block_order()
    return splits
