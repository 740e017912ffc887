"""Bad input on the command line: one clear line on stderr, exit status 2, never a traceback.

All of these fail before any cluster work starts, so no Ray is needed; most run the command in this process,
a few as the real `cracknet` process (its exit status, its stderr, no traceback).
"""

from types import SimpleNamespace

import pytest
import torch
from conftest import BUCKET, model_card

from cracknet.cli import main as cli_main
from cracknet.model.network import build_model, save_artifact


def assert_one_line_error(result, expected):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("cracknet: error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert expected in lines[-1], lines[-1]


@pytest.fixture
def in_process(capsys):
    """The command run in this process (no interpreter to start: these refusals come before any cluster work);
    what it printed and its exit status, as a subprocess would give them. `cracknet_cli` runs the real process."""
    def run(*args: str) -> SimpleNamespace:
        code = cli_main(list(args))
        printed = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=printed.out, stderr=printed.err)

    return run


def make_tree(root, layout):
    for rel in layout:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not decoded before the checks")
    return root


@pytest.mark.parametrize("layout, expected", [
    ([], "No images"),
    (["crack/a.jpg", "crack/b.jpg"], "only crack images"),
    (["crack/a.jpg", "no_crack/b.jpg", "unsure/c.jpg"], "not labels"),
])
def test_train_refuses_unusable_trees(tmp_path, in_process, layout, expected):
    data = make_tree(tmp_path / "data", layout)
    data.mkdir(exist_ok=True)
    result = in_process("train", "--data", str(data), "--output", str(tmp_path / "out"), "--weights", "none")
    assert_one_line_error(result, expected)


def test_train_refuses_a_missing_data_location(tmp_path, in_process):
    result = in_process("train", "--data", str(tmp_path / "nope"), "--output", str(tmp_path / "out"))
    assert_one_line_error(result, "does not exist")


def test_train_refuses_a_missing_weights_file(synthetic_tree, tmp_path, in_process):
    result = in_process("train", "--data", str(synthetic_tree), "--output", str(tmp_path / "out"),
                          "--weights", str(tmp_path / "missing.pt"))
    assert_one_line_error(result, "does not exist")


def test_train_refuses_to_overwrite_a_finished_model(synthetic_tree, tmp_path, in_process):
    save_artifact(str(tmp_path / "out" / "model"), build_model().state_dict(), {})
    result = in_process("train", "--data", str(synthetic_tree), "--output", str(tmp_path / "out"),
                          "--weights", "none")
    assert_one_line_error(result, "already holds a finished model; pass --overwrite")


def test_train_refuses_to_resume_with_other_settings(synthetic_tree, tmp_path, in_process):
    (tmp_path / "out" / "checkpoints").mkdir(parents=True)
    (tmp_path / "out" / "checkpoints" / "run.json").write_text(
        f'{{"data": "{synthetic_tree}", "image_size": 128, "weights": "none", "seed": 0, '
        '"val_fraction": 0.15, "test_fraction": 0.15, "head_epochs": 1}')
    result = in_process("train", "--data", str(synthetic_tree), "--output", str(tmp_path / "out"),
                          "--weights", "none", "--image-size", "64")
    assert_one_line_error(result, "image_size 128 -> 64")


def test_train_with_refused_s3_credentials(strict_s3_endpoint, tmp_path, cracknet_cli):
    result = cracknet_cli("train", "--data", "s3://crack-data/tree", "--output", str(tmp_path / "out"),
                          env={"AWS_ENDPOINT_URL": strict_s3_endpoint, "AWS_ACCESS_KEY_ID": "AKIAUNKNOWNKEY000001",
                               "AWS_SECRET_ACCESS_KEY": "not-a-real-secret", "AWS_DEFAULT_REGION": "us-east-1"})
    assert_one_line_error(result, "refused the credentials")


def test_train_with_a_missing_bucket(s3_endpoint, tmp_path, in_process):
    result = in_process("train", "--data", "s3://no-such-bucket/tree", "--output", f"s3://{BUCKET}/out")
    assert_one_line_error(result, "does not exist")


@pytest.mark.parametrize("flags, expected", [
    (["--epochs", "0"], "--epochs must be in [1, 10000], got 0."),
    (["--lr", "nan"], "--lr must be a finite number in (0, 10], got nan."),
    (["--val-fraction", "0.5", "--test-fraction", "0.5"], "leave at least 10%"),
    (["--image-size", "4"], "--image-size must be in [16, 4096], got 4."),
    (["--recall-confidence", "1"], "--recall-confidence must be in [0, 1), got 1.0."),
])
def test_train_refuses_bad_settings(synthetic_tree, tmp_path, capsys, flags, expected):
    assert cli_main(["train", "--data", str(synthetic_tree), "--output", str(tmp_path / "out"), "--weights", "none",
                     *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cracknet: error: ") and expected in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_evaluate_refuses_a_missing_model(synthetic_tree, tmp_path, in_process):
    result = in_process("evaluate", "--model", str(tmp_path / "nothing"), "--data", str(synthetic_tree))
    assert_one_line_error(result, "holds no finished model")


@pytest.mark.parametrize("flags, expected", [
    (["--target-recall", "0"], "--target-recall must be in (0, 1], got 0.0."),
    (["--target-recall", "0.9", "--recall-confidence", "-0.1"], "--recall-confidence must be in [0, 1), got -0.1."),
    (["--tile-size", "-3"], "--tile-size must be 0 (the model's own) or at least 16 source pixels, got -3."),
    (["--tile-size", "4"], "--tile-size must be 0 (the model's own) or at least 16 source pixels, got 4."),
])
def test_evaluate_refuses_bad_settings_before_reading_anything(tmp_path, capsys, flags, expected):
    assert cli_main(["evaluate", "--model", str(tmp_path / "nothing"), "--data", str(tmp_path / "none"),
                     *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"cracknet: error: {expected}"


def test_evaluate_refuses_damaged_weights(synthetic_tree, tmp_path, in_process):
    folder = tmp_path / "model"
    save_artifact(str(folder), build_model().state_dict(), model_card())
    torch.save({"conv1.weight": torch.zeros(1)}, folder / "weights.pt")
    result = in_process("evaluate", "--model", str(folder), "--data", str(synthetic_tree))
    assert_one_line_error(result, "does not match the hash")


def test_score_refuses_missing_inputs_with_one_line(synthetic_tree, tmp_path, cracknet_cli):
    result = cracknet_cli("score", "--model", str(tmp_path / "no-model"), "--input", str(synthetic_tree),
                          "--output", str(tmp_path / "results"))
    assert_one_line_error(result, "holds no finished model")

    model = tmp_path / "model"
    save_artifact(str(model), build_model().state_dict(), {"preprocessing": {"image_size": 32}, "threshold": 0.5})
    result = cracknet_cli("score", "--model", str(model), "--input", str(synthetic_tree),
                          "--output", str(tmp_path / "results"))
    assert_one_line_error(result, "lacks preprocessing.mean, preprocessing.std")

    save_artifact(str(model), build_model().state_dict(), model_card())
    result = cracknet_cli("score", "--model", str(model), "--input", str(tmp_path / "nowhere"),
                          "--output", str(tmp_path / "results"))
    assert_one_line_error(result, "does not exist")

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    result = cracknet_cli("score", "--model", str(model), "--input", str(tmp_path / "empty"),
                          "--output", str(tmp_path / "results"))
    assert_one_line_error(result, "No images")

    # A manifest's images may lie anywhere in its folder, so the output must lie outside that folder.
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "list.csv").write_text("path_to_image\na.jpg\n")
    result = cracknet_cli("score", "--model", str(model), "--input", str(tmp_path / "lists" / "list.csv"),
                          "--output", str(tmp_path / "lists" / "results"))
    assert_one_line_error(result, f"overlaps the input {tmp_path / 'lists'}")
    result = cracknet_cli("score", "--model", str(model), "--input", str(tmp_path / "lists" / "list.csv"),
                          "--output", str(tmp_path / "results"))
    assert_one_line_error(result, "has no image_uri column")
    assert not (tmp_path / "results" / "_delta_log").exists()  # nothing was committed


LIGHT = """
import sys
from cracknet.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # --help and --version exit through argparse
    code = exc.code
heavy = sorted(m for m in ("torch", "torchvision", "ray") if m in sys.modules)
print("imported:", ",".join(heavy) or "none")
sys.exit(code)
"""


@pytest.mark.parametrize("args, status", [
    (["--help"], 0),
    (["--version"], 0),
    (["query", "--results", "nowhere", "SELECT 1"], 2),
])
def test_help_version_and_query_never_import_torch(args, status, tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    run = subprocess.run([sys.executable, "-c", LIGHT, *args], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert run.returncode == status, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "imported: none"
    if args == ["--version"]:
        import cracknet

        assert run.stdout.startswith(f"cracknet {cracknet.__version__}")
    if args == ["--help"]:
        assert "Exit status" in run.stdout and "73" in run.stdout and "75" in run.stdout


def test_exit_statuses_tell_a_scheduler_what_to_retry():
    from cracknet.errors import CracknetError, OutputBusy, StorageUnavailable, exit_status, kind_of
    from cracknet.storage.lease import LeaseLost

    assert [exit_status(e("x")) for e in (CracknetError, OutputBusy, LeaseLost, StorageUnavailable)] == [2, 73, 73, 75]
    # A failure that came back through Ray as text keeps its kind.
    wrapped = RuntimeError("ray.exceptions.RayTaskError(StorageUnavailable): ... \n"
                           "cracknet.errors.StorageUnavailable: Cannot read s3://b/k: the object store kept failing")
    assert kind_of(wrapped) is StorageUnavailable and kind_of(ValueError("no")) is CracknetError
