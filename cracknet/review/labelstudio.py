"""Label Studio's formats, in one place: the labelling config, tasks with the model's pre-annotations, the JSON
export read back, and brush masks in its run-length encoding.

A task is one selected photo: ``data.image`` (a URL Label Studio can open), the photo's URI and its selection
(reason, probability, stratum) beside it; ``predictions`` carry the model's verdict (``verdict``: crack or no
crack) and, where scoring drew one, its crack mask (``mask``: a brush layer). The reviewer corrects both; the
export's ``annotations`` come back through ``read_export``.

Brush masks use the bit-packed run-length format of thi.ng/rle-pack that Label Studio's brush tool stores:
32 bits of value count, 5 bits of word size - 1, four 4-bit run-length sizes - 1, then chunks: a bit (1: a run
of one value, 0: literal values), 2 bits choosing a run-length size, the count - 1 in that many bits, then the
value(s). Values are the RGBA bytes of the mask, row by row; the alpha byte says crack (255) or not (0).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from cracknet.errors import CracknetError

VERDICT, MASK, IMAGE = "verdict", "mask", "image"
CRACK, NO_CRACK = "crack", "no crack"
RLE_SIZES = (3, 4, 8, 16)
CONFIG = f"""<View>
  <Header value="Is there a crack? Correct the drawn crack where it is wrong."/>
  <Image name="{IMAGE}" value="${IMAGE}" zoom="true" zoomControl="true"/>
  <Choices name="{VERDICT}" toName="{IMAGE}" choice="single" required="true">
    <Choice value="{CRACK}"/>
    <Choice value="{NO_CRACK}"/>
  </Choices>
  <BrushLabels name="{MASK}" toName="{IMAGE}">
    <Label value="{CRACK}" background="#e74c3c"/>
  </BrushLabels>
</View>
"""


# ---------------------------------------------------------------------------------------------------
# Brush masks


def encode_rle(mask: np.ndarray) -> list[int]:
    """A bool (H, W) mask as Label Studio's brush RLE (bytes as ints, as its JSON holds them)."""
    values = np.repeat(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8).ravel(), 4)
    bits = [f"{len(values):032b}", f"{8 - 1:05b}", "".join(f"{s - 1:04b}" for s in RLE_SIZES)]
    if len(values):
        change = np.flatnonzero(values[1:] != values[:-1]) + 1
        starts = np.concatenate([[0], change])
        lengths = np.diff(np.concatenate([starts, [len(values)]]))
        for start, length in zip(starts.tolist(), lengths.tolist()):
            value = f"{int(values[start]):08b}"
            while length > 0:
                count = min(length, 1 << RLE_SIZES[-1])
                size = next(i for i, s in enumerate(RLE_SIZES) if count <= 1 << s)
                bits.append(f"1{size:02b}{count - 1:0{RLE_SIZES[size]}b}{value}")
                length -= count
    text = "".join(bits)
    text += "0" * (-len(text) % 8)
    return list(int(text, 2).to_bytes(len(text) // 8, "big")) if text else []


def decode_rle(rle: list[int], width: int, height: int) -> np.ndarray:
    """A brush RLE back to a bool (H, W) mask (its alpha channel); a sentence where it does not fit the image."""
    bits = np.unpackbits(np.asarray(rle, dtype=np.uint8))
    at = 0

    def read(n: int) -> int:
        nonlocal at
        if at + n > len(bits):
            raise CracknetError("A brush mask's RLE ends early: it is damaged.")
        value = int("".join("1" if b else "0" for b in bits[at:at + n]) or "0", 2)
        at += n
        return value

    count, word = read(32), read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    if count != width * height * 4:
        raise CracknetError(f"A brush mask holds {count} values, not the {width * height * 4} of a {width} x "
                            f"{height} photo's RGBA.")
    out = np.zeros(count, dtype=np.uint8)
    i = 0
    while i < count:
        run = read(1)
        j = min(count, i + 1 + read(sizes[read(2)]))
        if run:
            out[i:j] = read(word)
        else:
            for k in range(i, j):
                out[k] = read(word)
        i = j
    return out.reshape(height, width, 4)[:, :, 3] > 127


# ---------------------------------------------------------------------------------------------------
# Tasks out, annotations back


def task(item: dict, image_url: str, mask: np.ndarray | None) -> dict:
    """One selected photo as a Label Studio task with the model's verdict (and crack mask) as a prediction."""
    result = [{"id": "verdict", "from_name": VERDICT, "to_name": IMAGE, "type": "choices",
               "value": {"choices": [CRACK if item["is_crack"] else NO_CRACK]}}]
    if mask is not None and mask.any():
        result.append({"id": "mask", "from_name": MASK, "to_name": IMAGE, "type": "brushlabels",
                       "original_width": int(mask.shape[1]), "original_height": int(mask.shape[0]),
                       "image_rotation": 0, "value": {"format": "rle", "rle": encode_rle(mask),
                                                      "brushlabels": [CRACK]}})
    data = {IMAGE: image_url, **{k: item.get(k) for k in ("image_uri", "version", "structure", "reason", "stratum",
                                                         "inclusion_probability", "crack_probability")}}
    return {"data": data, "predictions": [{"model_version": item["model_id"],
                                           "score": float(item["crack_probability"]), "result": result}]}


def read_export(text: bytes) -> list[dict]:
    """Label Studio's JSON export: per task, its photo (``data.image_uri``) and each annotation's verdict, crack
    mask (bool array, or None where none was drawn), annotator and time; cancelled (skipped) annotations are
    left out."""
    try:
        tasks = json.loads(text)
    except ValueError as exc:
        raise CracknetError(f"The labels are not Label Studio's JSON export: {exc}.") from None
    if not isinstance(tasks, list):
        raise CracknetError("The labels are not Label Studio's JSON export (a list of tasks).")
    out = []
    for t in tasks:
        data = t.get("data") or {}
        if not data.get("image_uri"):
            raise CracknetError(f"Task {t.get('id')} names no image_uri: it was not exported by cracknet review.")
        out.append({"task": t.get("id"), "image_uri": data["image_uri"], "version": data.get("version"),
                    "annotations": [_annotation(a) for a in t.get("annotations") or [] if not a.get("was_cancelled")]})
    return out


def _annotation(a: dict) -> dict[str, Any]:
    verdict, mask = None, None
    for r in a.get("result") or []:
        value = r.get("value") or {}
        if r.get("from_name") == VERDICT and value.get("choices"):
            if value["choices"][0] not in (CRACK, NO_CRACK):
                raise CracknetError(f"An annotation's verdict is {str(value['choices'][0])[:40]!r}, not {CRACK!r} or "
                                    f"{NO_CRACK!r}: label with the config cracknet review export wrote.")
            verdict = value["choices"][0] == CRACK
        elif r.get("from_name") == MASK and value.get("format") == "rle" and CRACK in value.get("brushlabels", []):
            try:
                width, height = int(r["original_width"]), int(r["original_height"])
            except (KeyError, TypeError, ValueError):
                raise CracknetError("A brush mask in the labels does not say its image's size (original_width, "
                                    "original_height): it is not Label Studio's export.") from None
            layer = decode_rle(value["rle"], width, height)
            mask = layer if mask is None else mask | layer
    who = a.get("completed_by")  # a user id, or {id, email} in some exports
    who = who.get("email") or f"user {who.get('id')}" if isinstance(who, dict) else who
    return {"annotator": None if who is None else who if isinstance(who, str) else f"user {who}", "verdict": verdict, "mask": mask,
            "created_at": a.get("created_at"), "updated_at": a.get("updated_at")}
