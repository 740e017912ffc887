"""Two gloo ranks predicting after a DDP step, in processes of their own."""

import os
import socket
import subprocess
import sys
import textwrap

from conftest import REPO

DDP_WORKER = textwrap.dedent("""
    import datetime, sys
    import numpy as np, torch, torch.distributed as dist
    from cracknet.train.worker import predict_shared
    from cracknet.images.decoding import Preprocessing

    rank, port = int(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=20))
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.AdaptiveAvgPool2d(1),
                                 torch.nn.Flatten(), torch.nn.Linear(4, 1))
    model = torch.nn.parallel.DistributedDataParallel(module)
    # A training step, as in an epoch: the next forward of the wrapped model would sync buffers.
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    # Rank 0 scores even rows, rank 1 odd ones: a small split can hold none for rank 1.
    batches = [{"image": torch.zeros(2, 16, 16, 3, dtype=torch.uint8), "label": torch.tensor([1, 0]),
                "idx": torch.tensor([0, 2])}]
    probs, labels = predict_shared(model, batches, Preprocessing(16), torch.device("cpu"), rank, 2)
    assert len(probs) == 2 and labels.tolist() == [1, 0], labels
    dist.barrier()
    print("done", rank)
""")


def test_validation_predicts_with_the_unwrapped_module_so_ranks_never_disagree_on_collectives():
    """A DDP forward syncs buffers across ranks; a rank with no rows in a batch skips it, so predicting with
    the wrapped model leaves the ranks in different collectives (a hang on NCCL, an error or hang on gloo)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ranks = [subprocess.Popen([sys.executable, "-c", DDP_WORKER, str(rank), port], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        outs = [r.communicate(timeout=120) for r in ranks]
    finally:
        for r in ranks:
            r.kill()
    assert [r.returncode for r in ranks] == [0, 0], [err[-1500:] for _, err in outs]
    assert [out.strip() for out, _ in outs] == ["done 0", "done 1"]
