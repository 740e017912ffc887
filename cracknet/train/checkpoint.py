"""A training run's checkpoints: one save / load pair for what a worker needs to resume.

    saved = save(folder, model, optimizer, stage, epoch, history, restarts, best)  # rank 0, each epoch
    state = load(ray.train.get_checkpoint())      # on resume, and on the driver after fit()
    kept = kept_epoch(state)                      # the epoch whose weights become the model

A checkpoint is one file, ``state.pt``: the model and optimiser state dicts, the
stage, the number of epochs done, the epoch history, the restart count and the
kept (lowest validation loss) epoch. It holds tensors, numbers, strings and lists
only, and is read back with ``torch.load(weights_only=True)``, so resuming never
unpickles an arbitrary object. Checkpoints are uploaded through ``cracknet.storage``
(``upload``), whose writes are verified, rather than Ray Train's own copy.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import torch

from cracknet import storage
from cracknet.errors import CracknetError

STATE_FILE = "state.pt"


def save(folder: str, module: torch.nn.Module, optimizer: torch.optim.Optimizer, stage: str, epoch: int,
         history: list[dict], restarts: int, best: dict | None):
    """Write one epoch's state into ``folder`` and return it as a Ray Train checkpoint. The kept epoch's weights
    are stored apart only when they are not this epoch's (then ``model`` holds them)."""
    import ray.train

    torch.save({"model": module.state_dict(), "optimizer": optimizer.state_dict(), "stage": stage,
                "epoch": epoch, "history": history, "restarts": restarts,
                "best": best if best is None or best["epoch"] != epoch else {**best, "model": None}},
               os.path.join(folder, STATE_FILE))
    return ray.train.Checkpoint.from_directory(folder)


def load(checkpoint) -> dict[str, Any]:
    """The state saved in a Ray Train checkpoint."""
    with checkpoint.as_directory() as folder:
        return read_state(os.path.join(folder, STATE_FILE))


def read_state(path: str) -> dict[str, Any]:
    """A training checkpoint's state (tensors, numbers, lists), never unpickling other objects."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CracknetError(f"Refusing to resume from {path}: it holds Python objects other than tensors and "
                            "numbers, and loading them could run code.") from None
    except Exception as exc:
        raise CracknetError(f"The checkpoint {path} is damaged ({type(exc).__name__}); "
                            "pass --overwrite to start afresh.") from None
    if not isinstance(state, dict) or not {"model", "epoch"} <= set(state):
        raise CracknetError(f"{path} is not a cracknet training checkpoint.")
    return state


def kept_epoch(state: dict[str, Any]) -> dict | None:
    """The kept (lowest validation loss) epoch recorded in a checkpoint, with its weights; None: keep the last."""
    best = state.get("best")
    if best is not None and best["model"] is None:
        best = {**best, "model": state["model"]}
    return best


def upload(checkpoint, dir_name: str, like: str):
    """Copy a checkpoint's files into the run's storage folder with storage's verified writes.

    Ray Train's own copy goes through a pyarrow multipart stream whose failed
    final part can be reported only when the stream is destroyed, after the
    checkpoint was registered as saved; a failed write here raises instead, so
    the worker fails and the run resumes from the last checkpoint that exists.
    """
    import ray.train

    run_storage = ray.train.get_context().get_storage()
    path = f"{run_storage.experiment_fs_path}/{dir_name}"
    destination = storage.to_uri(path, like)  # s3://... or the absolute local path
    with checkpoint.as_directory() as folder:
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as f:
                storage.write_bytes(storage.join(destination, name), f.read())
    return ray.train.Checkpoint(path=path, filesystem=run_storage.storage_filesystem)
