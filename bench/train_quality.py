"""Training quality benchmark: cracknet vs a plain single-process PyTorch loop, same budget.

    .venv/bin/python bench/train_quality.py                      # both, dev set, 64 px
    .venv/bin/python bench/train_quality.py --only cracknet --epochs 8
    .venv/bin/python bench/train_quality.py --only cracknet --epochs 8 --fp32-too   # bf16 vs float32

Both train ResNet50 from random init at 64 px on the train split of the same
content-hash split of the data (../shared/data/metu-dev by default) and are
scored on its test split. The baseline is what a user would write by hand:
one process, Adam at 1e-3, no augmentation, batches of 64, trained for as long
as cracknet took (wall clock). Prints test accuracy, precision and recall.
cracknet trains in the precision it picks for the machine (bf16 autocast on
CPUs with AVX512-BF16/AMX); ``--fp32-too`` also trains it in float32 with the
same settings and seed, to show what bf16 does to accuracy.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cracknet import storage  # noqa: E402
from cracknet.data.splits import split_of  # noqa: E402
from cracknet.data.trees import discover  # noqa: E402
from cracknet.images.decoding import Preprocessing, decode, eval_preset  # noqa: E402
from cracknet.measure.metrics import binary_metrics  # noqa: E402
from cracknet.model.network import build_model  # noqa: E402
from cracknet.storage import content_hash  # noqa: E402
from cracknet.train.config import TrainConfig  # noqa: E402

DEV_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "metu-dev")


def load_split(data: str, spec: Preprocessing):
    splits = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for image in discover(data):
        raw = storage.read_bytes(image.uri)
        images, labels = splits[split_of(content_hash(raw), 0.15, 0.15)]
        images.append(decode(raw, spec))
        labels.append(image.label)
    return {k: (torch.from_numpy(np.stack(v[0])), torch.tensor(v[1])) for k, v in splits.items()}


def baseline(data: str, image_size: int, seconds: float) -> dict:
    """The plain loop a user would write instead: one process, Adam, no augmentation."""
    spec = Preprocessing(image_size)
    splits = load_split(data, spec)
    torch.manual_seed(0)
    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_train, y_train = splits["train"]
    started, epochs = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        model.train()
        order = torch.randperm(len(x_train))
        for start in range(0, len(order) - 63, 64):
            idx = order[start:start + 64]
            loss = F.binary_cross_entropy_with_logits(model(eval_preset(x_train[idx], spec)).squeeze(1),
                                                      y_train[idx].float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if time.monotonic() - started >= seconds:
                break
        epochs += 1
    model.eval()
    x_test, y_test = splits["test"]
    with torch.no_grad():
        probs = torch.cat([torch.sigmoid(model(eval_preset(x_test[i:i + 128], spec)).squeeze(1))
                           for i in range(0, len(x_test), 128)]).numpy()
    return {**binary_metrics(probs, y_test.numpy(), 0.5), "epochs": epochs,
            "seconds": time.monotonic() - started}


def cracknet_run(data: str, image_size: int, epochs: int, output: str, fp32: bool = False) -> dict:
    from cracknet.train.driver import run_training

    cfg = TrainConfig(data=data, output=output, epochs=epochs, image_size=image_size, batch_size=32,
                      num_workers=2, weights="none", overwrite=True, fp32=fp32)
    started = time.monotonic()
    card = run_training(cfg, log=lambda line: print(line, flush=True))
    return {**card["metrics"]["test"], "epochs": epochs, "seconds": time.monotonic() - started}


def line(name: str, m: dict) -> str:
    return (f"{name:<14} accuracy {m['accuracy']:.4f}  precision {m['precision']:.4f}  recall {m['recall']:.4f}  "
            f"roc_auc {m['roc_auc']:.4f}  n={m['n']}  epochs {m['epochs']}  {m['seconds']:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEV_DATA)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10, help="cracknet epochs; the baseline gets the same time")
    parser.add_argument("--only", choices=["cracknet", "baseline"])
    parser.add_argument("--fp32-too", action="store_true", help="also train cracknet in float32")
    parser.add_argument("--baseline-seconds", type=float, help="baseline budget when run alone")
    args = parser.parse_args()

    results = {}
    if args.only != "baseline":
        with tempfile.TemporaryDirectory() as out:
            results["cracknet"] = cracknet_run(args.data, args.image_size, args.epochs, out)
        if args.fp32_too:
            with tempfile.TemporaryDirectory() as out:
                results["cracknet fp32"] = cracknet_run(args.data, args.image_size, args.epochs, out, fp32=True)
    if args.only != "cracknet":
        seconds = args.baseline_seconds or results.get("cracknet", {}).get("seconds", 600.0)
        results["baseline"] = baseline(args.data, args.image_size, seconds)
    precision = "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"
    print(f"\nTest split of {args.data} at {args.image_size} px, from random init, {os.cpu_count()} CPUs "
          f"(cracknet trains in {precision} here):")
    for name, metrics in results.items():
        print(line(name, metrics))


if __name__ == "__main__":
    main()
