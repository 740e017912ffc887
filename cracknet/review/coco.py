"""The selection as COCO, for CVAT and other tools that import it: each photo an image (``file_name`` its URI,
cracknet's selection under ``cracknet``), each drawn crack mask an annotation of category ``crack`` with the mask
as uncompressed RLE (``iscrowd`` 1, COCO's convention for RLE; counts run down columns, starting with
background), its box and its area. A photo the model judged cracked without drawing a mask has no annotation;
its verdict and probability ride along in its image entry.
"""

from __future__ import annotations

import numpy as np

CATEGORY = {"id": 1, "name": "crack", "supercategory": "defect"}


def mask_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a bool (H, W) mask: run lengths in column-major order, background first."""
    flat = np.asarray(mask, dtype=np.uint8).ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [len(flat)]])).tolist()
    if len(flat) and flat[0]:
        runs = [0] + runs  # counts start with background
    return {"counts": runs, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def dataset(items: list[tuple[dict, np.ndarray | None]], description: str) -> dict:
    """A COCO dataset of the selected photos (``items``: (selection row, its drawn mask or None))."""
    images, annotations = [], []
    for image_id, (item, mask) in enumerate(items, start=1):
        images.append({"id": image_id, "file_name": item["image_uri"], "width": int(item["width"]),
                       "height": int(item["height"]),
                       "cracknet": {k: item.get(k) for k in ("structure", "reason", "inclusion_probability",
                                                            "crack_probability", "is_crack", "model_id")}})
        if mask is None or not mask.any():
            continue
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": CATEGORY["id"],
                            "segmentation": mask_rle(mask), "iscrowd": 1, "area": int(mask.sum()),
                            "bbox": [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1),
                                     int(rows[-1] - rows[0] + 1)],
                            "score": float(item["crack_probability"])})
    return {"info": {"description": description, "version": "1.0"}, "licenses": [], "images": images,
            "annotations": annotations, "categories": [CATEGORY]}
