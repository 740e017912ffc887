"""Ray Data ingest for training: read, hash and decode once, then split by content hash.

    decoded, plan = load_labelled(images, root, spec, cfg)   # on the driver
    splits = split_datasets(decoded, plan)                   # {"train": ds, "val": ds, "test": ds}

Decoding runs in Ray Data CPU tasks with the shared preprocessing; the decoded
uint8 images are materialised once in the object store (at the training scale
they are small), so training epochs never decode again. The per-batch
functions are plain module-level functions, testable without Ray.
"""

from __future__ import annotations

import random

import numpy as np

from cracknet import storage
from cracknet.data import NO_GROUPS, LabelledImage, SplitPlan, content_hash, grouper, label_of, plan_splits
from cracknet.transforms import ImageError, Preprocessing, decode, open_image

DECODE_BATCH = 32


def decode_batch(batch: dict, spec: Preprocessing, root: str) -> dict:
    """Bytes rows -> path, label, sha256, side (longest, in source pixels), image (uint8 S x S x 3), error."""
    size = spec.image_size
    n = len(batch["path"])
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    labels = np.zeros(n, dtype=np.int64)
    sides = np.zeros(n, dtype=np.int64)
    hashes, errors = [], []
    for i, (path, data) in enumerate(zip(batch["path"], batch["bytes"])):
        labels[i] = label_of(root, path)
        hashes.append(content_hash(data))
        try:
            sides[i] = max(open_image(data, spec.max_pixels).size)
            images[i] = decode(data, spec)
            errors.append("")
        except ImageError as exc:
            errors.append(str(exc))
    return {
        "path": np.asarray(batch["path"], dtype=object),
        "label": labels,
        "sha256": np.asarray(hashes, dtype=object),
        "side": sides,
        "image": images,
        "error": np.asarray(errors, dtype=object),
    }


def select_split(batch: dict, members: dict[str, int]) -> dict:
    """Keep the rows of one split, with their index in it (for exact sharded evaluation)."""
    keep = [i for i, path in enumerate(batch["path"]) if path in members]
    return {
        "image": batch["image"][keep],
        "label": batch["label"][keep],
        "idx": np.asarray([members[batch["path"][i]] for i in keep], dtype=np.int64),
    }


def load_labelled(images: list[LabelledImage], root: str, spec: Preprocessing,
                  val_fraction: float, test_fraction: float, max_bad_fraction: float, seed: int = 0,
                  grouping: str = NO_GROUPS):
    """Read and decode every image in Ray Data; plan the split on the driver (by ``grouping``, resolved:
    see ``data.resolve_grouping``).

    The files are read in a seeded random order: listed in folder order, every
    block would hold one class, and even a local shuffle buffer would then feed
    the model long single-class runs (which wrecks BatchNorm statistics).
    """
    import ray.data

    fs, root_path = storage.resolve(root)
    paths = [storage.resolve(image.uri)[1] for image in images]
    random.Random(seed).shuffle(paths)
    decoded = (
        ray.data.read_binary_files(paths, filesystem=fs, include_paths=True)
        .map_batches(decode_batch, fn_kwargs={"spec": spec, "root": root_path},
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
