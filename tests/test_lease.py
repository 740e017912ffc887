"""The output lease: one scoring run at a time, on S3 (conditional writes) and on local disk (flock)."""

import json
import subprocess
import sys
import time

import pytest

from cracknet import storage
from cracknet.errors import CracknetError
from cracknet.lease import LEASE_FILE, Lease, LeaseLost

from conftest import BUCKET, REPO


def test_a_second_run_is_refused_while_the_first_holds_the_lease(store_root):
    with Lease(store_root, owner={"run_id": "first"}, seconds=60):
        with pytest.raises(CracknetError) as info:
            Lease(store_root, owner={"run_id": "second"}, seconds=60).acquire()
        message = str(info.value)
        assert message.startswith(f"Another scoring run is writing to {store_root}: run first on ")
        assert "\n" not in message
    # Released: the next run gets it.
    with Lease(store_root, owner={"run_id": "third"}, seconds=60) as lease:
        lease.check()


def test_a_dead_runs_lease_expires_and_exactly_one_successor_takes_it_over(s3_endpoint):
    output = f"s3://{BUCKET}/lease-test/expiry"
    dead = Lease(output, owner={"run_id": "dead"}, seconds=1.0)
    dead._acquire_s3()  # acquired but never renewed: the run died
    time.sleep(1.2)
    successor = Lease(output, owner={"run_id": "successor"}, seconds=60).acquire()
    try:
        with pytest.raises(CracknetError, match="run successor"):
            Lease(output, owner={"run_id": "late"}, seconds=60).acquire()
        # The dead run, if it was only stalled, finds out before it could commit.
        with pytest.raises(LeaseLost, match="was taken over by another run"):
            dead.check()
        successor.check()
    finally:
        successor.release()
    assert not storage.exists(f"{output}/{LEASE_FILE}")


def test_a_live_run_keeps_its_lease_by_renewing_it(s3_endpoint):
    output = f"s3://{BUCKET}/lease-test/renewal"
    with Lease(output, owner={"run_id": "long"}, seconds=1.0) as lease:
        time.sleep(2.0)  # several lease lengths; the background renewal keeps it alive
        with pytest.raises(CracknetError, match="run long"):
            Lease(output, owner={"run_id": "other"}, seconds=1.0).acquire()
        lease.check()
        record = json.loads(storage.read_bytes(f"{output}/{LEASE_FILE}"))
        assert time.time() - record["renewed_at"] < 1.0


def test_a_local_lease_dies_with_its_process(tmp_path):
    output = tmp_path / "results"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from cracknet.lease import Lease; "
         f"lease = Lease({str(output)!r}, owner={{'run_id': 'child'}}).acquire(); "
         "print('held', flush=True); time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CracknetError, match=f"run child on .* \\(pid {holder.pid}\\)"):
            Lease(str(output), owner={"run_id": "parent"}).acquire()
    finally:
        holder.kill()
        holder.wait()
    with Lease(str(output), owner={"run_id": "parent"}):
        pass
