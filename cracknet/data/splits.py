"""Splits: which images travel together (a folder, a photo's tiles) and which split each group lands in.

    by = resolve_grouping("auto", root, images)          # "none", "folder", "folder:N", "photo" or a regex
    plan = plan_splits(rows, val_fraction=0.15, test_fraction=0.15, group_of=grouper(by, root))

Tiles cut from one photo must never straddle splits, or validation measures
memory of those photos rather than the surface. With a grouping, whole groups
(photos, structures) go to one split: groups are ordered by the SHA-256 of
their name and given to test, validation and train in turn until each holds its
share of the images. ``auto`` groups by photo folder when the tree is
``<label>/<photo>/<tile>``; ``folder:N`` by the first N folders below the label;
a regular expression by what it matches at the start of the file name (its first
group if it has one), within its folder. The tiles of one photo sit in the same
group under both labels.

Without groups, the split of an image is decided by the SHA-256 of its bytes
alone, so the same image always lands in the same split (also when the data set
grows). Either way exact duplicates can never straddle splits; duplicate copies
are dropped and images whose copies carry contradicting labels are dropped and
counted, and every split must end up holding both classes.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

from cracknet.data.trees import CLASS_NAMES, SPLITS, LabelledImage, has_masks, relative_parts
from cracknet.errors import CracknetError

NO_GROUPS, FOLDER, PHOTO = "none", "folder", "photo"


# Names such as photo12_x3_y1, DSC0042_r2_c5, img-004-017: the tiles of a few photos.
TILE_NAME = re.compile(r"(.+?)[_\-. ](?:x|y|c|r|col|row|tile|t|i|j)?\d+[_\-. ](?:x|y|c|r|col|row|j)?\d+$", re.I)


def check_grouping(by: str) -> None:
    """Refuse a --group-by that is neither a keyword nor a regular expression, in one sentence."""
    if by in ("auto", NO_GROUPS, FOLDER, PHOTO) or re.fullmatch(r"folder:[1-9]\d*", by):
        return
    try:
        re.compile(by)
    except re.error as exc:
        raise CracknetError(f"--group-by {by!r} is not auto, none, photo, folder, folder:N or a regular expression "
                            f"({exc}).") from None


def _name_and_folders(root: str, uri: str) -> tuple[str, list[str]]:
    parts = relative_parts(root, uri)
    return parts[-1], parts[1:-1]  # below the label folder


def resolve_grouping(by: str, root: str, images: list[LabelledImage]) -> str:
    """``auto`` becomes ``folder`` where images sit in folders below their label (``<label>/<photo>/<tile>``),
    else ``photo`` for a tree with masks (whose photos are cut into crops for training), else ``none``; other
    values are returned as they are."""
    if by != "auto":
        return by
    if any(_name_and_folders(root, image.uri)[1] for image in images):
        return FOLDER
    return PHOTO if has_masks(images) else NO_GROUPS


def grouper(by: str, root: str) -> Callable[[str], str] | None:
    """The group of an image's path under ``root``, for a resolved grouping (None: no groups)."""
    if by == NO_GROUPS:
        return None
    if by == PHOTO:  # each image (photo) its own group: the crops cut from it stay together
        return lambda uri: "/".join(relative_parts(root, uri))
    levels = int(by.split(":")[1]) if by.startswith("folder:") else None
    pattern = None if by == FOLDER or levels else re.compile(by)

    def group_of(uri: str) -> str:
        name, folders = _name_and_folders(root, uri)
        if pattern is None:
            kept = folders[:levels] if levels else folders
            return "/".join(kept) if kept else name  # an image outside any photo folder is a group of its own
        found = pattern.match(name)
        if found is None:
            raise CracknetError(f"{uri} does not match --group-by {by!r}; every image name must match it "
                                "(from its start), or use --group-by none.")
        return "/".join([*folders, found.group(1) if pattern.groups else found.group(0)])

    return group_of


def looks_tiled(root: str, images: list[LabelledImage]) -> tuple[int, str] | None:
    """(photos, an example name) when most names look like tiles of a few photos (``photo_x3_y1``), else None."""
    names = [_name_and_folders(root, image.uri)[0] for image in images]
    stems = [TILE_NAME.match(name.rsplit(".", 1)[0]) for name in names]
    matched = [(m.group(1), name) for m, name in zip(stems, names) if m]
    photos = {prefix for prefix, _ in matched}
    if len(matched) >= 0.8 * len(names) and len(photos) * 3 <= len(names):
        return len(photos), matched[0][1]
    return None


def ungrouped_tiles(root: str, images: list[LabelledImage]) -> str:
    """The warning for a split by image of names that look like tiles of a few photos, else ""."""
    tiled = looks_tiled(root, images)
    if not tiled:
        return ""
    return (f"the image names look like tiles of about {tiled[0]} photos (e.g. {tiled[1]}), but the split is by "
            "image: tiles of one photo will straddle train, validation and test, and validation will measure "
            "memory of those photos. Group them: --group-by '(.*)_x\\d+_y\\d+' (a pattern that matches your "
            "names), or put each photo's tiles in a folder of its own.")


def assign_groups(sizes: dict[str, int], val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Whole groups to splits: ordered by the SHA-256 of their name, a group goes to test while the images
    before its middle are under ``test_fraction`` of all, then to validation, then to train."""
    total, before, splits = sum(sizes.values()), 0, {}
    for key in sorted(sizes, key=lambda k: hashlib.sha256(k.encode()).hexdigest()):
        middle = (before + sizes[key] / 2.0) / total
        splits[key] = "test" if middle < test_fraction else "val" if middle < test_fraction + val_fraction \
            else "train"
        before += sizes[key]
    return splits


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
    grouping: str = NO_GROUPS
    groups: dict[str, str] = field(default_factory=dict)  # uri -> group, for the images kept (with a grouping)
    labels: dict[str, int] = field(default_factory=dict)  # uri -> label, for the images kept

    def group_counts(self) -> dict[str, int]:
        return {split: len({self.groups[uri] for uri in members}) for split, members in self.members.items()}

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
            "grouping": self.grouping_summary(),
        }

    def grouping_summary(self) -> dict:
        """What the card keeps: the grouping, groups per split, and the groups held out (train is the rest)."""
        if self.grouping == NO_GROUPS:
            return {"by": NO_GROUPS}
        held_out = {f"{split}_groups": sorted({self.groups[uri] for uri in self.members[split]})
                    for split in ("val", "test")}
        return {"by": self.grouping, "groups": self.group_counts(), **held_out}


def plan_splits(
    rows: Iterable[dict],
    val_fraction: float,
    test_fraction: float,
    max_bad_fraction: float = 0.01,
    group_of: Callable[[str], str] | None = None,
    grouping: str = NO_GROUPS,
) -> SplitPlan:
    """Assign decoded rows (``path``, ``label``, ``sha256``, ``error``, optional ``side``) to splits.

    Rows with an ``error`` are unreadable images: counted, and fatal above
    ``max_bad_fraction`` of all images. With ``group_of`` (path -> group, see ``grouper``), whole groups
    go to one split (``assign_groups``); else each image by its content hash.
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
    kept = []
    for sha in sorted(by_hash):
        copies = sorted(by_hash[sha])
        if len({label for _, label in copies}) > 1:
            conflicts += len(copies)
            continue
        duplicates += len(copies) - 1
        kept.append((sha, *copies[0]))
    groups = {uri: group_of(uri) for _, uri, _ in kept} if group_of else {}
    if group_of:
        group_split = assign_groups(dict(Counter(groups.values())), val_fraction, test_fraction)
    for sha, uri, label in kept:
        split = group_split[groups[uri]] if group_of else split_of(sha, val_fraction, test_fraction)
        members[split][uri] = len(members[split])
        if label >= 0:  # a crop the head is not taught (datasets.UNLABELLED) counts as neither class
            counts[split][CLASS_NAMES[label]] += 1
        fingerprint.update(f"{sha} {label} {split}\n".encode())

    for split in SPLITS:
        missing = [name for name, n in counts[split].items() if n == 0]
        if missing:
            held = f"{sum(counts[split].values())} images"
            if group_of:
                held += f" of {len({groups[uri] for uri in members[split]})} groups ({grouping})"
            raise CracknetError(
                f"The {split} split holds no {' or '.join(missing)} images ({held} in it); the data set is too "
                "small to split, add images (or photos) or raise --val-fraction/--test-fraction."
            )
    typical_side = int(sorted(sides)[len(sides) // 2]) if sides else 0
    return SplitPlan(members, counts, duplicates, conflicts, unreadable, fingerprint.hexdigest(), typical_side,
                     grouping if group_of else NO_GROUPS, groups, {uri: label for _, uri, label in kept})
