"""The output lease: one scoring run at a time, on S3 (conditional writes) and on local disk (flock)."""

import json
import subprocess
import sys
import time

import pytest
from conftest import BUCKET, REPO

from cracknet import storage
from cracknet.errors import CracknetError, OutputBusy
from cracknet.storage import lease as lease_module
from cracknet.storage.lease import LEASE_FILE, Lease, LeaseLost


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
    time.sleep(2.2)  # the store's clock counts whole seconds
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
        [sys.executable, "-c", "import time; from cracknet.storage.lease import Lease; "
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


def test_expiry_is_judged_by_the_stores_clock_not_the_writers(s3_endpoint, monkeypatch):
    output = f"s3://{BUCKET}/lease-test/skew"
    real = time.time
    # A live holder; a taker whose clock runs six minutes fast must still see it as live.
    with Lease(output, owner={"run_id": "live"}, seconds=60):
        monkeypatch.setattr(lease_module, "_now", lambda: real() + 360)
        with pytest.raises(OutputBusy, match="run live .* its lease expires in"):
            Lease(output, owner={"run_id": "fast-taker"}, seconds=60).acquire()
    # A holder whose clock ran a day fast died: its lease expires after its length by the store, not "tomorrow".
    monkeypatch.setattr(lease_module, "_now", lambda: real() + 86_400)
    Lease(output, owner={"run_id": "dead-and-fast"}, seconds=1.0)._acquire_s3()
    monkeypatch.setattr(lease_module, "_now", real)
    time.sleep(2.2)
    with Lease(output, owner={"run_id": "next"}, seconds=60) as taken:
        taken.check()


def test_a_holder_that_cannot_renew_after_a_takeover_does_not_commit(s3_endpoint, monkeypatch):
    from botocore.exceptions import EndpointConnectionError

    output = f"s3://{BUCKET}/lease-test/fenced"
    stalled = Lease(output, owner={"run_id": "stalled"}, seconds=1.0)
    stalled._acquire_s3()
    stalled.check()  # fresh: it may commit
    time.sleep(2.2)  # stalled past its lease (a long pause, a partitioned network) ...
    successor = Lease(output, owner={"run_id": "successor"}, seconds=60).acquire()
    try:
        def unreachable(**_):
            raise EndpointConnectionError(endpoint_url=s3_endpoint)

        monkeypatch.setattr(stalled, "_put", unreachable)  # ... and now it cannot even reach the store
        with pytest.raises(LeaseLost, match="could not renew its lease .* results are not committed"):
            stalled.check()
        successor.check()
    finally:
        successor.release()


def test_an_unreadable_lease_file_is_presumed_dead_after_the_lease_length(s3_endpoint):
    output = f"s3://{BUCKET}/lease-test/empty"
    storage.write_bytes(f"{output}/{LEASE_FILE}", b"")
    with pytest.raises(OutputBusy) as info:
        Lease(output, owner={"run_id": "first"}, seconds=1.0).acquire()
    message = str(info.value)
    assert "cannot be read (empty or not JSON); it is treated as expired" in message and "same moment" not in message
    time.sleep(2.2)
    with Lease(output, owner={"run_id": "after"}, seconds=1.0) as taken:  # by the length a taker asks for
        taken.check()
        assert json.loads(storage.read_bytes(f"{output}/{LEASE_FILE}"))["run_id"] == "after"


@pytest.mark.parametrize("date", ["Tue, 01 Dec 2026 23:21:57 GMT",
                                  "Tue, 01 Dec 2026 23:21:57 GMT, Tue, 01 Dec 2026 23:21:58 GMT",  # a proxy's own
                                  "Tue, 01 Dec 2026 23:21:57 -0000"])
def test_a_lease_age_reads_the_stores_date_however_it_is_written(date):
    from datetime import datetime, timezone

    written = datetime(2026, 12, 1, 23, 21, 47, tzinfo=timezone.utc)
    age = lease_module._store_age({"ResponseMetadata": {"HTTPHeaders": {"date": date}}, "LastModified": written})
    assert age == 9.0  # ten seconds by the store, less the second its clock may round away
