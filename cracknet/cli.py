"""The ``cracknet`` command.

    cracknet demo                                   # train on the dev set (or generated images) and test
    cracknet train --data URI --output URI [...]    # Ray Train fine-tuning, writes URI/model/
    cracknet evaluate --model URI --data [NAME=]URI [--data ...] [--record] [--json PATH] [--target-recall R]
    cracknet explain --model URI IMAGE --output PNG # Grad-CAM overlay: where the model sees a crack
    cracknet report --model URI [--data URI] [--results URI] --output DIR
    cracknet score --model URI --input URI --output URI     # Ray Data bulk scoring into a Delta table
    cracknet query --results URI "SQL"                      # DuckDB over the committed results
    cracknet compact --results URI                          # merge small files, vacuum unreferenced ones
    cracknet promote --model models:/cracknet/8 --alias champion --data NAME=URI   # the promotion gate

Every user-facing failure ends in one line on stderr and a documented exit status: 1 when the promotion gate
refused a candidate, 2 for bad usage or
input (retrying will not help), 73 when another run holds the output, 75 when the object store kept
failing (both worth retrying later; see errors.EXIT_*), 130 when interrupted, 143 when stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
import threading

from cracknet import screen, storage
from cracknet.config import add_arguments, from_arguments
from cracknet.console import (alert_lines, crack_lines, format_metrics, group_table, mask_line, print_training,
                              surface_table)
from cracknet.data.splits import check_grouping
from cracknet.errors import (EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_UNAVAILABLE, CracknetError, GateRefused,
                             Terminated, exit_status)
from cracknet.measure.geometry import DEFAULT_WIDTH_CLASSES, parse_width_classes
from cracknet.measure.metrics import json_safe
from cracknet.measure.thresholds import MAX_FALSE_ALARMS, check_recall_settings, operating_point_caveat
from cracknet.score.config import ScoreConfig, check_tile_size
from cracknet.storage.lease import DEFAULT_LEASE_SECONDS
from cracknet.table.compact import DEFAULT_RETENTION_HOURS
from cracknet.table.query import QUERY_MEMORY, QUERY_SECONDS
from cracknet.train.config import TrainConfig
from cracknet.version import __version__

DEV_DATA = os.path.join("..", "shared", "data", "metu-dev")


def cmd_train(args: argparse.Namespace) -> None:
    cfg = from_arguments(TrainConfig, args)  # bad settings are refused before torch and Ray are imported
    from cracknet.train.driver import run_training

    print_training(run_training(cfg))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from cracknet.model.card import read_model, record_evaluations
    from cracknet.predict.evaluate import evaluate_surfaces, parse_surface, surface_row
    from cracknet.registry import versions

    check_recall_settings(args.target_recall, args.recall_confidence, args.max_false_alarms)
    check_tile_size(args.tile_size)
    check_grouping(args.group_by)
    reports = evaluate_surfaces(args.model, [parse_surface(d) for d in args.data], args.batch_size,
                                args.target_recall, args.recall_confidence, tile_size=args.tile_size,
                                max_false_alarms=args.max_false_alarms, group_by=args.group_by)
    for name, report in reports.items():
        title = f"{name}: " if len(reports) > 1 else ""
        print(f"{title}{report['images']} images under {report['data']}, {len(report['unreadable'])} unreadable.")
        print(f"Metrics: {format_metrics(report['metrics'])}")
        if report["metrics"].get("interval_caveat"):
            print(f"Note: {report['metrics']['interval_caveat']}")
        print(f"At 0.5:  {format_metrics(report['metrics_at_0.5'])}")
        if "for_target_recall" in report:
            chosen = report["for_target_recall"]
            print(f"For recall >= {chosen['target_recall']} on this data: {format_metrics(chosen['metrics'])}")
            if operating_point_caveat(chosen):
                print(f"Warning: {operating_point_caveat(chosen, where='in this data')}")
        if "masks" in report:
            print(mask_line(report["masks"]))
        if report["groups"]:
            print("\n".join(group_table(report["groups"], report["grouping"])))
    rows = {name: surface_row(report) for name, report in reports.items()}
    threshold = next(iter(reports.values()))["threshold"]
    if len(reports) > 1:
        print(f"At the model's threshold {threshold:.3f}:")
        print("\n".join(surface_table(rows)))
    if args.json:
        single = next(iter(reports.values()))
        document = single if len(reports) == 1 else {"surfaces": reports}
        storage.write_bytes(args.json, json.dumps(json_safe(document), indent=2, allow_nan=False).encode())
        print(f"Wrote {args.json}")
    if args.record:
        folder = read_model(args.model)["folder"] if versions.is_registry_uri(args.model) else args.model
        print(f"Recorded {', '.join(rows)} in {record_evaluations(folder, rows)} (evaluations).")


def cmd_explain(args: argparse.Namespace) -> None:
    from cracknet.predict.explain import explain

    if args.mm_per_pixel is not None and not args.mm_per_pixel > 0:
        raise CracknetError(f"--mm-per-pixel must be positive, got {args.mm_per_pixel}.")
    parse_width_classes(args.width_classes)
    result = explain(args.model, args.image, args.output, mm_per_pixel=args.mm_per_pixel,
                     width_classes=args.width_classes)
    verdict = "crack" if result["is_crack"] else "no crack"
    drawn = "" if result["cracks"] is None else " with crack lines"
    print(f"{args.image}: crack probability {result['crack_probability']:.3f} ({verdict} at threshold "
          f"{result['threshold']:.3f}); Grad-CAM overlay{drawn} written to {args.output}")
    for line in crack_lines(result["cracks"] or []):
        print(line)


def cmd_report(args: argparse.Namespace) -> None:
    from cracknet.report.build import build_report

    written = build_report(args.model, args.output, data=args.data, split=args.split, results=args.results)
    print(f"Report: {written['report']} ({len(written['figures'])} figures beside it)")


def cmd_score(args: argparse.Namespace) -> None:
    from cracknet.score.driver import run_scoring

    s = run_scoring(from_arguments(ScoreConfig, args))
    version = f" (version {s['model_version']})" if s.get("model_version") else ""
    print(f"Scored {s['scored']} images ({s['errors']} errors), skipped {s['skipped']} already scored by model "
          f"{s['model_id']}{version}, {s['images_per_second']:.1f} images/s in {s['seconds']:.1f} s "
          f"({s.get('pipeline_seconds', 0.0):.1f} s in the pipeline); results in {s['output']} (run {s['run_id']}).")
    for line in alert_lines(s):
        print(line)


def cmd_promote(args: argparse.Namespace) -> None:
    from cracknet.predict.evaluate import parse_surface
    from cracknet.predict.promote import promote

    surfaces = [parse_surface(text) for text in args.data or []]
    try:
        verdict = promote(args.model, args.alias, surfaces, name=args.registered_model, force=args.force,
                          mlflow_uri=args.mlflow, batch_size=args.batch_size)
    except CracknetError:
        raise
    except Exception as exc:  # the registry's own failures (a server that went away, refused credentials)
        if not type(exc).__module__.startswith("mlflow"):
            raise
        from cracknet.registry.mlflow_client import reason

        raise CracknetError(f"The model registry failed: {reason(exc, args.mlflow or '')}") from None
    if not verdict["promoted"] and not verdict.get("unchanged"):
        raise GateRefused(verdict["line"])
    if not verdict.get("unchanged"):
        print(verdict["line"])


def cmd_query(args: argparse.Namespace) -> None:
    from cracknet.table.query import render, run_query

    print(render(run_query(args.results, args.sql, timeout=args.timeout, memory_limit=args.memory_limit),
                 args.format))


def cmd_compact(args: argparse.Namespace) -> None:
    from cracknet.table.compact import compact

    c = compact(args.results, args.retention_hours, args.lease_seconds)
    print(f"Compacted {c['results']}: {c['files_before']} files -> {c['files_after']} ({c['files_removed']} merged "
          f"into {c['files_added']}); vacuumed {c['files_deleted']} unreferenced files and {c['masks_deleted']} "
          f"superseded masks older than {c['retention_hours']} h.")


def cmd_demo(args: argparse.Namespace) -> None:
    from cracknet.demo.run import adapt_demo, masks_demo, run_demo, verdict

    done = run_demo(args.data, args.output, args.epochs, args.image_size, verbose=args.verbose)
    print_training(done["card"])
    s = done["scoring"]
    print(f"Scored a survey of {s['scored']} images ({s['errors']} errors) into {s['output']}.")
    print(f"Report: {done['report']} (open it in a browser; figures beside it)")
    drawn = masks_demo(done["card"], args.output, verbose=args.verbose)
    print_training(drawn["card"])
    s = drawn["scoring"]
    measured = "; ".join(f"{r['cracks']} {r['severity'] or 'not graded'} ({r['length_mm']:g} mm, widest "
                         f"{r['widest_mm']:g} mm)" for r in drawn["cracks"]) or "no cracks"
    print(f"Scored {s['scored']} photos with crack geometry into {s['output']} (0.2 mm per pixel): {measured}. "
          f"Query it: cracknet query --results {s['output']} \"SELECT * FROM wider_than(1.25)\"")
    print(f"Crack geometry report: {drawn['report']}")
    if args.adapt:
        adapted = adapt_demo(done["card"], args.output, verbose=args.verbose)
        print_training(adapted["card"])
        print(f"The adapted model {adapted['card']['folder']} on the held-out asphalt: {verdict(adapted['after'])}; "
              f"before: {verdict(adapted['before'])}.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cracknet", description="Find cracks in photos of concrete.",
                                     allow_abbrev=False,
                                     epilog="Exit status: 0 done; 1 the promotion gate refused; 2 bad usage or input; 73 another run holds the "
                                            "output; 75 the object store is unavailable (retry later); "
                                            "130 interrupted; 143 stopped by SIGTERM.")
    parser.add_argument("--version", action="version", version=f"cracknet {__version__}")
    # allow_abbrev=False: a mistyped flag is an error, never a silent match of a longer one.
    sub = parser.add_subparsers(dest="command", required=True,
                                parser_class=functools.partial(argparse.ArgumentParser, allow_abbrev=False))

    train = sub.add_parser("train", help="fine-tune ResNet50 with Ray Train and write <output>/model/")
    add_arguments(train, TrainConfig)
    train.set_defaults(run=cmd_train)

    evaluate = sub.add_parser("evaluate", help="metrics of a model on a labelled tree")
    evaluate.add_argument("--model", required=True, help="the model/ folder, or the training output above it")
    evaluate.add_argument("--data", required=True, action="append", metavar="[NAME=]URI",
                          help="labelled tree (local path or s3://bucket/prefix), optionally named for its surface; "
                               "repeat for several surfaces, one row each")
    evaluate.add_argument("--record", action="store_true",
                          help="keep each surface's row in the model card (evaluations), shown by cracknet report")
    evaluate.add_argument("--json", help="also write the metrics as JSON here (path or s3://)")
    evaluate.add_argument("--batch-size", type=int, default=0,
                          help="tiles per model call (default: 64, or 8 in float32 on a CPU)")
    evaluate.add_argument("--tile-size", type=int, default=0,
                          help="tile side in source pixels for large images, as for score (default: the model's "
                               "training images)")
    evaluate.add_argument("--target-recall", type=float,
                          help="also report the threshold that keeps this recall on this data, and its precision")
    evaluate.add_argument("--recall-confidence", type=float, default=0.95,
                          help="confidence the --target-recall threshold keeps that recall on new images")
    evaluate.add_argument("--group-by", default="auto",
                          help="per-group rows (photos, structures): auto (photo folders where the tree has "
                               "<label>/<photo>/<tile>), none, folder, folder:N or a regular expression on the file "
                               "name, as for train (default: auto)")
    evaluate.add_argument("--max-false-alarms", type=float, default=MAX_FALSE_ALARMS,
                          help="the --target-recall threshold flags at most this share of no-crack images "
                               f"(default: {MAX_FALSE_ALARMS})")
    evaluate.set_defaults(run=cmd_evaluate)

    explain = sub.add_parser("explain", help="Grad-CAM heatmap: which pixels made the model say crack (PNG)")
    explain.add_argument("--model", required=True, help="the model/ folder, or the training output above it")
    explain.add_argument("image", help="the image: a local path or s3:// URI")
    explain.add_argument("--output", "--out", dest="output", required=True,
                         help="where the PNG overlay goes (path or s3://)")
    explain.add_argument("--mm-per-pixel", type=float, default=None,
                         help="the photo's scale, for crack sizes in mm and severity (models that draw masks)")
    explain.add_argument("--width-classes", default=DEFAULT_WIDTH_CLASSES,
                         help="severity classes by crack width in mm, name:below_mm,...,name (default: AASHTO MBEI "
                              "defect 1130)")
    explain.set_defaults(run=cmd_explain)

    report = sub.add_parser("report", help="HTML report (self-contained) and PNG figures of a model, "
                                           "an evaluation set and scoring results")
    report.add_argument("--model", help="the model/ folder, the training output above it, or models:/...; may be "
                                        "left out with --results (a report of the nights alone)")
    report.add_argument("--output", "--out", dest="output", required=True,
                        help="folder for report.html and the PNGs (path or s3://)")
    report.add_argument("--data", help="a labelled tree to evaluate on: confusion matrix, curves, error gallery")
    report.add_argument("--split", choices=("all", "val", "test"), default="all",
                        help="evaluate only this split of the model's own training run (by content hash)")
    report.add_argument("--results", help="a scoring output: distribution, per day and structure, top cracks, the "
                                          "nights over time with drift and alerts, structures that changed")
    report.set_defaults(run=cmd_report)

    promote = sub.add_parser("promote", help="move a registry alias (the model in service) to a model, only when it "
                                             "is no worse on the named labelled surfaces")
    promote.add_argument("--model", required=True,
                         help="the candidate: models:/NAME/VERSION, or a model folder (registered if it is not yet)")
    promote.add_argument("--alias", default="champion", help="the alias to move (default: champion)")
    promote.add_argument("--data", action="append", metavar="[NAME=]URI",
                         help="a labelled surface to compare the candidate and the alias holder on; repeatable")
    promote.add_argument("--registered-model", default=None,
                         help="the registered model (default: the one --model names, else cracknet)")
    promote.add_argument("--force", metavar="REASON", default=None,
                         help="move the alias even where the gate refuses or no surface is named; the reason is "
                              "recorded with the version")
    promote.add_argument("--mlflow", default=None, help="the MLflow registry (default: MLFLOW_TRACKING_URI)")
    promote.add_argument("--batch-size", type=int, default=0,
                         help="tiles per model call (default: 64, or 8 in float32 on a CPU)")
    promote.set_defaults(run=cmd_promote)

    score = sub.add_parser("score", help="score images from storage with Ray Data and commit them to the results table (Delta Lake)")
    add_arguments(score, ScoreConfig)
    score.set_defaults(run=cmd_score)

    query = sub.add_parser("query", help="SQL over committed scoring results (views: images, tiles, current, ...)")
    query.add_argument("--results", required=True, help="the scoring output: a folder or s3:// prefix")
    query.add_argument("--format", choices=["table", "csv", "json"], default="table")
    query.add_argument("--timeout", type=float, default=QUERY_SECONDS,
                       help=f"stop a query still running after this many seconds (default: {QUERY_SECONDS:g})")
    query.add_argument("--memory-limit", default=QUERY_MEMORY,
                       help=f"DuckDB's memory limit; beyond it a query spills to the system temp (default: "
                            f"{QUERY_MEMORY})")
    query.add_argument("sql", help="a DuckDB SQL query, e.g. \"SELECT * FROM likely_cracks_since('2026-11-23')\"")
    query.set_defaults(run=cmd_query)

    compact = sub.add_parser("compact", help="merge the results table's small files and vacuum unreferenced ones "
                                              "(holds the scoring lease)")
    compact.add_argument("--results", required=True, help="the scoring output: a folder or s3:// prefix")
    compact.add_argument("--retention-hours", type=int, default=DEFAULT_RETENTION_HOURS,
                         help="keep unreferenced files younger than this, for readers of older snapshots "
                              f"(default: {DEFAULT_RETENTION_HOURS}, Delta's one week)")
    compact.add_argument("--lease-seconds", type=float, default=DEFAULT_LEASE_SECONDS,
                         help="how long the lease on the output lasts without renewal (as for score)")
    compact.set_defaults(run=cmd_compact)

    demo = sub.add_parser("demo", help="train on the dev set (or generated images), score a small survey and "
                                       "write the report, on a local Ray")
    demo.add_argument("--data", default=DEV_DATA, help=f"labelled tree (default: {DEV_DATA}, else generated)")
    demo.add_argument("--output", default=os.path.join("runs", "demo"))
    demo.add_argument("--epochs", type=int, default=3)
    demo.add_argument("--image-size", type=int, default=64)
    demo.add_argument("--adapt", action="store_true",
                      help="then adapt the model to a surface it never saw (generated asphalt) and measure both")
    demo.add_argument("--verbose", action="store_true", help="also show Ray's INFO logs and Ray Data's progress bars")
    demo.set_defaults(run=cmd_demo)
    return parser


def _terminate(signum, frame) -> None:
    raise Terminated()


# The flags that name a storage location, checked before any command runs (``storage.check_location``).
LOCATION_ARGUMENTS = ("data", "output", "model", "input", "input_prefix", "results", "masks", "base_model", "weights")


def _listed(value) -> list[str]:
    return [] if value is None else [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]


def secrets_of(args: argparse.Namespace) -> list[str]:
    """The URLs this command was given that may hold secrets (credentials, tokens, a webhook's secret path)."""
    given = (getattr(args, "mlflow", None), getattr(args, "alert_webhook", None),
             os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("CRACKNET_ALERT_WEBHOOK"))
    return [url for url in given if url]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)  # unwind, releasing the lease, rather than die mid-step
    try:
        for name in LOCATION_ARGUMENTS:
            for uri in _listed(getattr(args, name, None)):
                storage.check_location(uri.split("=", 1)[-1] if name == "data" else uri)
        args.run(args)
    except CracknetError as exc:
        print(screen.line(f"cracknet: error: {exc}", *secrets_of(args)), file=sys.stderr)
        return exit_status(exc)
    except Exception as exc:  # noqa: BLE001 - the store out of reach where no sentence was made for it: 75
        if not storage.out_of_reach(exc):
            raise  # a bug: let it show as itself
        print(screen.line(f"cracknet: error: The object store is out of reach: {storage.reason(exc)}",
                          *secrets_of(args)), file=sys.stderr)
        return EXIT_UNAVAILABLE
    except Terminated:
        print("cracknet: stopped by SIGTERM; a run commits whole or not at all, and what was committed before is "
              "kept", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("cracknet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
