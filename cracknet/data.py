"""Labelled image trees: discovery, and the content-hash train/val/test split.

A labelled tree looks like ``<root>/<label>/.../<image>``, at a local path or
``s3://bucket/prefix``. Labels are ``crack`` / ``no_crack`` (also the common
``Positive`` / ``Negative``); images are jpg, jpeg, png or tif, in any case.

    images = discover("../shared/data/metu-dev")
    plan = plan_splits(rows, val_fraction=0.15, test_fraction=0.15)

The split of an image is decided by the SHA-256 of its bytes alone, so the same
image always lands in the same split (also when the data set grows), and exact
duplicates can never straddle splits; duplicate copies are dropped and images
whose copies carry contradicting labels are dropped and counted. Each class is
split at the same fractions (stratified in expectation), and every split must
end up holding both classes.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Optional

from cracknet import storage
from cracknet.errors import CracknetError

CLASS_NAMES = ("no_crack", "crack")
LABELS = {
    "crack": 1, "cracks": 1, "positive": 1, "cracked": 1,
    "no_crack": 0, "nocrack": 0, "no-crack": 0, "no crack": 0, "negative": 0, "uncracked": 0,
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LabelledImage:
    uri: str
    label: int


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _relative_parts(root: str, uri: str) -> list[str]:
    rel = posixpath.relpath(uri.replace("\\", "/"), root.replace("\\", "/").rstrip("/"))
    return rel.split("/")


def label_of(root: str, uri: str) -> Optional[int]:
    """The label of an image from its top folder under ``root``; None if unknown."""
    parts = _relative_parts(root, uri)
    return LABELS.get(parts[0].strip().lower()) if len(parts) > 1 else None


def discover(root: str, require_both_classes: bool = True) -> list[LabelledImage]:
    """Every image in a labelled tree, with its label; refuses trees it cannot train on."""
    files = [uri for uri in storage.list_files(root) if is_image_name(uri)]
    if not files:
        raise CracknetError(
            f"No images (jpg, jpeg, png, tif) were found under {root}; "
            f"expected {root}/crack/... and {root}/no_crack/...."
        )
    images, unknown = [], Counter()
    for uri in files:
        label = label_of(root, uri)
        if label is None:
            parts = _relative_parts(root, uri)
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
    if require_both_classes and len(present) < 2:
        raise CracknetError(
            f"{root} holds only {CLASS_NAMES[present.pop()]} images; training needs both crack and no_crack."
        )
    return images


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split_of(sha256: str, val_fraction: float, test_fraction: float) -> str:
    """The split of an image, from its content hash alone."""
    u = int(sha256[:16], 16) / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


@dataclass
class SplitPlan:
    """Which decoded image goes to which split, and what was left out and why."""

    members: dict[str, dict[str, int]]  # split -> {uri: row index within the split}
    counts: dict[str, dict[str, int]]  # split -> {class name: images}
    duplicates: int = 0
    conflicts: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    fingerprint: str = ""
    typical_side: int = 0  # median longest side of the readable images, in source pixels

    @property
    def total(self) -> int:
        return sum(len(m) for m in self.members.values())

    def summary(self) -> dict:
        return {
            "counts": self.counts,
            "duplicates_dropped": self.duplicates,
            "conflicting_labels_dropped": self.conflicts,
            "unreadable": len(self.unreadable),
            "fingerprint": self.fingerprint,
        }


def plan_splits(
    rows: Iterable[dict],
    val_fraction: float,
    test_fraction: float,
    max_bad_fraction: float = 0.01,
) -> SplitPlan:
    """Assign decoded rows (``path``, ``label``, ``sha256``, ``error``, optional ``side``) to splits.

    Rows with an ``error`` are unreadable images: counted, and fatal above
    ``max_bad_fraction`` of all images.
    """
    by_hash: dict[str, list[tuple[str, int]]] = {}
    unreadable, sides, seen = [], [], 0
    for row in rows:
        seen += 1
        if row["error"]:
            unreadable.append((row["path"], row["error"]))
        else:
            by_hash.setdefault(row["sha256"], []).append((row["path"], int(row["label"])))
            sides.append(int(row.get("side", 0)))
    if seen and len(unreadable) > max_bad_fraction * seen:
        examples = "; ".join(f"{uri}: {err}" for uri, err in unreadable[:3])
        raise CracknetError(
            f"{len(unreadable)} of {seen} images could not be decoded, more than the allowed "
            f"{max_bad_fraction:.1%} (--max-bad-fraction); for example {examples}."
        )

    members = {split: {} for split in SPLITS}
    counts = {split: {name: 0 for name in CLASS_NAMES} for split in SPLITS}
    duplicates = conflicts = 0
    fingerprint = hashlib.sha256()
    for sha in sorted(by_hash):
        copies = sorted(by_hash[sha])
        if len({label for _, label in copies}) > 1:
            conflicts += len(copies)
            continue
        duplicates += len(copies) - 1
        uri, label = copies[0]
        split = split_of(sha, val_fraction, test_fraction)
        members[split][uri] = len(members[split])
        counts[split][CLASS_NAMES[label]] += 1
        fingerprint.update(f"{sha} {label} {split}\n".encode())

    for split in SPLITS:
        missing = [name for name, n in counts[split].items() if n == 0]
        if missing:
            raise CracknetError(
                f"The {split} split holds no {' or '.join(missing)} images "
                f"({sum(counts[split].values())} images in it); the data set is too small "
                "to split, add images or raise --val-fraction/--test-fraction."
            )
    typical_side = int(sorted(sides)[len(sides) // 2]) if sides else 0
    return SplitPlan(members, counts, duplicates, conflicts, unreadable, fingerprint.hexdigest(), typical_side)
