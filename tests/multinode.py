"""A multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``), run in a process of its own and
steered over stdin, so that the test process's own Ray (and its authentication state) is never touched.

    python tests/multinode.py --head-cpus 1 --nodes 3 --node-cpus 2

Prints one JSON line when the cluster is up: {"address": ..., "raylets": [pid, ...]} (one raylet per worker
node, in order). Then reads commands, one per line, and answers each with a JSON line:

    kill <pid>     SIGKILL that worker node's raylet and every process on it   -> {"raylets": [...]}
    add            start one more worker node                                   -> {"raylets": [...]}
    stop           shut the cluster down and exit

The token comes from RAY_AUTH_TOKEN (RAY_AUTH_MODE=token) in the environment, as on a real cluster.
"""

from __future__ import annotations

import argparse
import json
import sys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--head-cpus", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--node-cpus", type=int, default=2)
    args = parser.parse_args()

    from ray.cluster_utils import Cluster

    # A lost node is declared dead after 3 missed health checks a second apart (Ray's defaults take about 30 s:
    # the same sequence of events, slower).
    health = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
              "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": args.head_cpus, "include_dashboard": False,
                                      "node_ip_address": "127.0.0.1", "_system_config": health})
    workers = []

    def add() -> None:
        workers.append(cluster.add_node(num_cpus=args.node_cpus, node_ip_address="127.0.0.1"))

    def raylets() -> list[int]:
        return [node.all_processes["raylet"][0].process.pid for node in workers]

    for _ in range(args.nodes):
        add()
    cluster.wait_for_nodes()
    print(json.dumps({"address": cluster.address, "raylets": raylets()}), flush=True)
    try:
        for line in sys.stdin:
            command, *rest = line.split()
            if command == "kill":
                node = workers[raylets().index(int(rest[0]))]
                cluster.remove_node(node, allow_graceful=False)
                workers.remove(node)
            elif command == "add":
                add()
                cluster.wait_for_nodes()
            elif command == "stop":
                break
            print(json.dumps({"raylets": raylets()}), flush=True)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
