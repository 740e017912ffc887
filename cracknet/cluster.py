"""Joining a Ray cluster, or starting a local one: shared by training and scoring.

    ensure_ray(None)               # RAY_ADDRESS when set, else a fresh local Ray in this process
    ensure_ray("auto")             # the cluster a `ray start` runs on this machine
"""

from __future__ import annotations

import os


def ensure_ray(address: str | None, min_cpus: float = 0) -> None:
    """Connect to the given (or RAY_ADDRESS) cluster, or start a local Ray in this process.

    Without an address this always starts a fresh local Ray, even when a `ray start`
    cluster runs on this machine: pass --ray-address auto to use that one.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # Reserve logical CPUs for Ray Data next to the training workers on small machines.
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(min_cpus) + 1),
                 _node_ip_address="127.0.0.1")
