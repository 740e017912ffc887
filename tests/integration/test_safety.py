"""Nothing lost, no one in: maintenance deletes only the table's own files, outputs never overlap their inputs,
S3 keys are judged as they will be read, and a query reads the table and nothing else."""

from __future__ import annotations

import pytest
from conftest import BUCKET, TEST_SECRET_KEY
from helpers import commit_run

from cracknet import storage
from cracknet.cli import main as cli_main
from cracknet.errors import CracknetError
from cracknet.predict.scorer import fetch
from cracknet.table import results
from cracknet.table.compact import compact
from cracknet.table.query import render, run_query


def test_compaction_deletes_only_the_files_the_table_wrote(store_root):
    output = storage.join(store_root, "results")
    commit_run(output, [f"s3://s/a-{i}.jpg" for i in range(4)], files=2)
    commit_run(output, [f"s3://s/b-{i}.jpg" for i in range(4)], run_id="run-2", files=2)
    kept = {  # what a person keeps beside the results: none of it is the table's
        "photos/bridge-7/IMG_0001.jpg": b"\xff\xd8\xff a photo",
        "report/report.html": b"<html>a report</html>",
        "notes.json": b"{}",
        "run_date=2026-11-23/inspector-photo.jpg": b"\xff\xd8\xff in a partition folder",
        "run_date=2026-11-23/part-notes.txt": b"not a Parquet file",
    }
    for rel, data in kept.items():
        storage.write_bytes(storage.join(output, rel), data)
    dead = storage.join(output, "run_date=2026-11-24/part-dead-0123456789ab.parquet")  # a run that died
    storage.write_bytes(dead, b"PAR1 never committed")

    done = compact(output, retention_hours=0)

    assert done["files_deleted"] == 4 + 1  # the four replaced by compaction, and the dead run's file
    for rel, data in kept.items():
        assert storage.read_bytes(storage.join(output, rel)) == data, rel
    assert not storage.exists(dead)
    assert run_query(output, "SELECT count(*) AS n FROM images").to_pylist() == [{"n": 8}]
    assert compact(output, retention_hours=0)["files_deleted"] == 0  # Delta still lists them: none is there


def test_compact_and_score_say_which_kind_of_failure_it_was_in_one_line(tmp_path, monkeypatch, capsys):
    assert cli_main(["compact", "--results", str(tmp_path / "nonexistent")]) == 2
    assert not (tmp_path / "nonexistent").exists()  # refused before its lease was written
    for flag, value in (("--lease-seconds", "nan"), ("--lease-seconds", "inf"), ("--retention-hours", "-1")):
        assert cli_main(["compact", "--results", str(tmp_path), flag, value]) == 2
        assert f"{flag} must be" in capsys.readouterr().err
    assert cli_main(["query", "--results", "s3://bucket//results", "SELECT 1"]) == 2
    assert "s3://bucket//results has an empty path segment (//); write it as s3://bucket/results." in \
        capsys.readouterr().err
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unused")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unused")
    for command in (["compact", "--results", "s3://bucket/results"],
                    ["query", "--results", "s3://bucket/results", "SELECT 1"],
                    ["score", "--model", str(tmp_path), "--input", "s3://bucket/in", "--output", "s3://bucket/out"]):
        assert cli_main(command) == 75, command
        err = capsys.readouterr().err.strip()
        assert err.startswith("cracknet: error: ") and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("relation", ["same", "output above the input", "output inside the input"])
def test_an_output_that_overlaps_the_input_is_refused_before_anything_is_written(store_root, relation):
    survey = storage.join(store_root, "survey")
    storage.write_bytes(storage.join(survey, "incoming", "a.jpg"), b"photo")
    output = {"same": storage.join(survey, "incoming"), "output above the input": survey,
              "output inside the input": storage.join(survey, "incoming", "results")}[relation]
    with pytest.raises(CracknetError, match="overlaps the input .* choose another --output"):
        results.check_output(output, inputs=(storage.join(survey, "incoming"),))
    assert storage.list_files(survey) == [storage.join(survey, "incoming", "a.jpg")]


def test_a_new_output_must_be_empty_or_hold_only_cracknets_own_files(store_root):
    output = storage.join(store_root, "results")
    results.check_output(output)  # nothing there yet
    storage.write_bytes(storage.join(output, "_staging", "run-1", "plan-000000.parquet"), b"plan")
    storage.write_bytes(storage.join(output, "run_date=2026-11-24", "part-dead-0123.parquet"), b"dead run")
    results.check_output(output)  # what a run that died before its first commit left
    storage.write_bytes(storage.join(output, "2026", "IMG_0001.jpg"), b"photo")
    with pytest.raises(CracknetError, match="already holds files that are not a cracknet results table"):
        results.check_output(output)
    # An existing table is cracknet's, whatever a person put beside it (compaction leaves those alone).
    table = storage.join(store_root, "table")
    commit_run(table, ["s3://s/a.jpg"])
    storage.write_bytes(storage.join(table, "notes.json"), b"{}")
    results.check_output(table)


def test_score_refuses_such_outputs_with_one_line(tmp_path, random_model, capsys):
    survey = tmp_path / "survey"
    storage.write_bytes(str(survey / "incoming" / "a.jpg"), b"photo")
    assert cli_main(["score", "--model", str(random_model), "--input", str(survey / "incoming"),
                     "--output", str(survey)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cracknet: error: The output ") and "overlaps the input" in err and "\n" not in err
    assert cli_main(["score", "--model", str(random_model), "--input", str(survey / "incoming"),
                     "--output", str(tmp_path / "with%41percent")]) == 2
    assert "contains '%'" in capsys.readouterr().err
    assert not (tmp_path / "with%41percent").exists()


def test_outputs_with_spaces_and_unicode_work(store_root):
    output = storage.join(store_root, "résultats du pont", "ñ 漢字")
    commit_run(output, [f"s3://s/a-{i}.jpg" for i in range(3)])
    commit_run(output, [f"s3://s/b-{i}.jpg" for i in range(3)], run_id="run-2")
    assert run_query(output, "SELECT count(*) AS n FROM images").to_pylist() == [{"n": 6}]
    assert compact(output, retention_hours=0)["files_deleted"] == 2


def test_an_s3_key_is_judged_as_it_will_be_read(s3_endpoint):
    root = f"s3://{BUCKET}/keys"
    storage.write_bytes(f"{root}/private/secret.jpg", b"secret")
    storage.write_bytes(f"{root}/survey/x.jpg", b"photo")
    found, data = fetch(f"{root}/survey/../private/secret.jpg", root=f"{root}/survey")
    assert data is None and "lies outside the input location" in found.error
    found, data = fetch(f"{root}/survey/x.jpg", root=f"{root}/survey")
    assert data == b"photo" and not found.error


QUERIES_REFUSED = [
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM read_text('/proc/self/environ')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM glob('/*')",
    "COPY (SELECT 1) TO '{tmp}/written.csv'",
    "ATTACH '{tmp}/other.duckdb'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
]


@pytest.mark.parametrize("sql", QUERIES_REFUSED)
def test_a_query_reads_the_table_and_nothing_else(tmp_path, sql, s3_endpoint):
    output = str(tmp_path / "results")
    commit_run(output, ["s3://s/a.jpg", "s3://s/b.jpg"], errors=["", "unreadable"])
    with pytest.raises(CracknetError) as info:
        run_query(output, sql.format(tmp=tmp_path))
    assert str(info.value).startswith("The query failed: ") and TEST_SECRET_KEY not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_a_query_has_a_deadline_a_memory_limit_and_its_spill_folder_under_the_system_temp(tmp_path):
    import tempfile
    import time

    output = str(tmp_path / "results")
    commit_run(output, ["s3://s/a.jpg"])
    started = time.monotonic()
    with pytest.raises(CracknetError, match=r"The query ran longer than 1 s and was stopped"):
        run_query(output, "SELECT count(*) FROM range(100000000000) a, range(1000) b", timeout=1.0)
    assert time.monotonic() - started < 15
    settings = run_query(output, "SELECT current_setting('temp_directory') AS spill, "
                                 "current_setting('memory_limit') AS memory").to_pylist()[0]
    assert settings["spill"].startswith(tempfile.gettempdir()) and "cracknet-query-" in settings["spill"]
    assert settings["memory"].replace(" ", "").lower().startswith(("1.8gib", "1.9gib", "2.0gb", "2gb"))
    for empty in ("", "  ;", "-- only a comment", "/* a comment */"):
        with pytest.raises(CracknetError, match="holds no SQL statement"):
            run_query(output, empty)
    cells = render(run_query(output, "SELECT '=HYPERLINK(1)' AS a, '+1' AS b, -0.5 AS c, '@x' AS d, 'ok' AS e"), "csv")
    assert cells.splitlines()[1] == "\"'=HYPERLINK(1)\",\"'+1\",-0.5,\"'@x\",\"ok\""


def test_sigint_and_sigterm_stop_a_running_query(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    output = str(tmp_path / "results")
    commit_run(output, ["s3://s/a.jpg"])
    for sent, status in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        run = subprocess.Popen([sys.executable, "-m", "cracknet.cli", "query", "--results", output,
                                "SELECT count(*) FROM range(100000000000) a, range(1000) b"],
                               stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        run.send_signal(sent)
        _, err = run.communicate(timeout=30)
        assert run.returncode == status and len(err.strip().splitlines()) == 1, err
