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
from cracknet.demo.run import DemoConfig
from cracknet.errors import (EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_UNAVAILABLE, CracknetError, GateRefused,
                             Terminated, exit_status)
from cracknet.measure.metrics import json_safe
from cracknet.measure.thresholds import operating_point_caveat
from cracknet.predict.evaluate import EvaluateConfig
from cracknet.predict.explain import ExplainConfig
from cracknet.predict.promote import PromoteConfig
from cracknet.report.build import ReportConfig
from cracknet.review.loop import ReviewExportConfig, ReviewImportConfig, ReviewSelectConfig
from cracknet.score.config import ScoreConfig
from cracknet.table.compact import CompactConfig
from cracknet.table.export import ExportConfig
from cracknet.table.query import QueryConfig
from cracknet.train.config import TrainConfig
from cracknet.version import __version__


def cmd_train(args: argparse.Namespace) -> None:
    cfg = from_arguments(TrainConfig, args)  # bad settings are refused before torch and Ray are imported
    from cracknet.train.driver import run_training

    print_training(run_training(cfg))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from cracknet.model.card import read_model, record_evaluations
    from cracknet.predict.evaluate import evaluate_surfaces, parse_surface, surface_row
    from cracknet.registry import versions

    cfg = from_arguments(EvaluateConfig, args)
    reports = evaluate_surfaces(cfg.model, [parse_surface(d) for d in cfg.data], cfg.batch_size,
                                cfg.target_recall, cfg.recall_confidence, tile_size=cfg.tile_size,
                                max_false_alarms=cfg.max_false_alarms, group_by=cfg.group_by)
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
    if cfg.json:
        single = next(iter(reports.values()))
        document = single if len(reports) == 1 else {"surfaces": reports}
        storage.write_bytes(cfg.json, json.dumps(json_safe(document), indent=2, allow_nan=False).encode())
        print(f"Wrote {cfg.json}")
    if cfg.record:
        folder = read_model(cfg.model)["folder"] if versions.is_registry_uri(cfg.model) else cfg.model
        print(f"Recorded {', '.join(rows)} in {record_evaluations(folder, rows)} (evaluations).")


def cmd_explain(args: argparse.Namespace) -> None:
    from cracknet.predict.explain import explain

    cfg = from_arguments(ExplainConfig, args)
    result = explain(cfg.model, cfg.image, cfg.output, mm_per_pixel=cfg.mm_per_pixel,
                     width_classes=cfg.width_classes)
    verdict = "crack" if result["is_crack"] else "no crack"
    drawn = "" if result["cracks"] is None else " with crack lines"
    print(f"{cfg.image}: crack probability {result['crack_probability']:.3f} ({verdict} at threshold "
          f"{result['threshold']:.3f}); Grad-CAM overlay{drawn} written to {cfg.output}")
    for line in crack_lines(result["cracks"] or []):
        print(line)


def cmd_report(args: argparse.Namespace) -> None:
    from cracknet.report.build import build_report

    cfg = from_arguments(ReportConfig, args)
    written = build_report(cfg.model, cfg.output, data=cfg.data, split=cfg.split, results=cfg.results)
    print(f"Report: {written['report']} ({len(written['figures'])} figures beside it)")


def cmd_score(args: argparse.Namespace) -> None:
    from cracknet.score.driver import run_scoring

    s = run_scoring(from_arguments(ScoreConfig, args))
    version = f" (version {s['model_version']})" if s.get("model_version") else ""
    print(f"Scored {s['scored']} images ({s['errors']} errors), skipped {s['skipped']} already scored by model "
          f"{s['model_id']}{version}, {s['images_per_second']:.1f} images/s in {s['seconds']:.1f} s "
          f"({s.get('pipeline_seconds', 0.0):.1f} s in the pipeline); results in {s['output']} (run {s['run_id']}).")
    if s.get("sites", {}).get("error"):
        print(f"Photos were not grouped by position this time (the next run groups them): {s['sites']['error']}")
    elif s.get("sites", {}).get("placed"):
        print(f"Grouped {s['sites']['placed']} photos into structures by position ({s['sites']['new_sites']} new "
              f"sites).")
    for line in alert_lines(s):
        print(line)


def cmd_promote(args: argparse.Namespace) -> None:
    from cracknet.predict.evaluate import parse_surface
    from cracknet.predict.promote import promote

    cfg = from_arguments(PromoteConfig, args)
    surfaces = [parse_surface(text) for text in cfg.data]
    try:
        verdict = promote(cfg.model, cfg.alias, surfaces, name=cfg.registered_model, force=cfg.force,
                          mlflow_uri=cfg.mlflow, batch_size=cfg.batch_size)
    except CracknetError:
        raise
    except Exception as exc:  # the registry's own failures (a server that went away, refused credentials)
        if not type(exc).__module__.startswith("mlflow"):
            raise
        from cracknet.registry.mlflow_client import reason

        raise CracknetError(f"The model registry failed: {reason(exc, cfg.mlflow or '')}") from None
    if not verdict["promoted"] and not verdict.get("unchanged"):
        raise GateRefused(verdict["line"])
    if not verdict.get("unchanged"):
        print(verdict["line"])


def cmd_query(args: argparse.Namespace) -> None:
    from cracknet.table.query import render, run_query

    cfg = from_arguments(QueryConfig, args)
    print(render(run_query(cfg.results, cfg.sql, timeout=cfg.timeout, memory_limit=cfg.memory_limit), cfg.format))


def cmd_compact(args: argparse.Namespace) -> None:
    from cracknet.table.compact import compact

    cfg = from_arguments(CompactConfig, args)
    c = compact(cfg.results, cfg.retention_hours, cfg.lease_seconds)
    print(f"Compacted {c['results']}: {c['files_before']} files -> {c['files_after']} ({c['files_removed']} merged "
          f"into {c['files_added']}); vacuumed {c['files_deleted']} unreferenced files and {c['masks_deleted']} "
          f"superseded masks older than {c['retention_hours']} h.")


def cmd_export(args: argparse.Namespace) -> None:
    from cracknet.table.export import export

    done = export(from_arguments(ExportConfig, args))
    print(f"Wrote {done['rows']} rows to {done['output']} ({done['format']}): {done['on_ground']} cracks placed on the "
          f"ground ({done['lines']} with their lines), {done['at_photo']} at their photo's position, "
          f"{done['unplaced']} without a position.")


def cmd_review_select(args: argparse.Namespace) -> None:
    from cracknet.review.loop import ReviewSelectConfig, select_for_review

    s = select_for_review(from_arguments(ReviewSelectConfig, args))
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(s["reasons"].items()))
    print(f"Selected {s['selected']} of {s['population']} photos scored by model {s['model_id']} for review ({why}; "
          f"{s['structures']} structures) into {args.output}. Next: cracknet review export --review {args.output}")


def cmd_review_export(args: argparse.Namespace) -> None:
    from cracknet.review.loop import ReviewExportConfig, export_tasks

    e = export_tasks(from_arguments(ReviewExportConfig, args))
    if e["format"] == "coco":
        print(f"Wrote {e['tasks']} images and {e['masks']} crack masks as COCO to {e['folder']}/annotations.json.")
        return
    print(f"Wrote {e['tasks']} Label Studio tasks ({e['masks']} with the model's crack mask) and the labelling "
          f"config to {e['folder']}: create a project with config.xml, import tasks.json, and export the "
          f"annotations as JSON when done.")


def cmd_review_import(args: argparse.Namespace) -> None:
    from cracknet.review.loop import ReviewImportConfig, import_labels

    i = import_labels(from_arguments(ReviewImportConfig, args))
    f, m = i["field"], i["field"]["metrics"]

    def shown(name: str) -> str:
        low_high = f["intervals"][name]
        return "n/a" if m[name] is None else f"{m[name]:.3f} [{low_high[0]:.3f}, {low_high[1]:.3f}]"

    print(f"Imported {f['reviewed']} verdicts by {len(i['annotators'])} reviewers into {args.output} "
          f"({i['written']['masks']} with masks, {i['written']['crack']} cracked without); "
          f"{len(i['conflicts'])} photos with conflicting verdicts left out.")
    print(f"In the field, model {i['model_id']}: precision {shown('precision')}, recall {shown('recall')} over "
          f"{f['population']} photos ({f['targeted']} reviewed for cause, {f['random']} at random).")
    if i.get("registry"):
        print(f"Registry: {i['registry']}")
    for c in i["conflicts"][:10]:
        print(f"  conflict: {c['image_uri']}: " + ", ".join(f"{who} says {'crack' if v else 'no crack'}"
                                                          for who, v in c["verdicts"].items()))


def cmd_demo(args: argparse.Namespace) -> None:
    from cracknet.demo.run import adapt_demo, masks_demo, run_demo, verdict

    cfg = from_arguments(DemoConfig, args)
    done = run_demo(cfg.data, cfg.output, cfg.epochs, cfg.image_size, verbose=cfg.verbose)
    print_training(done["card"])
    s = done["scoring"]
    print(f"Scored a survey of {s['scored']} images ({s['errors']} errors) into {s['output']}.")
    print(f"Report: {done['report']} (open it in a browser; figures beside it)")
    drawn = masks_demo(done["card"], cfg.output, verbose=cfg.verbose)
    print_training(drawn["card"])
    s = drawn["scoring"]
    measured = "; ".join(f"{r['cracks']} {r['severity'] or 'not graded'} ({r['length_mm']:g} mm, widest "
                         f"{r['widest_mm']:g} mm)" for r in drawn["cracks"]) or "no cracks"
    print(f"Scored {s['scored']} photos with crack geometry into {s['output']} (0.2 mm per pixel): {measured}. "
          f"Query it: cracknet query --results {s['output']} \"SELECT * FROM wider_than(1.25)\"")
    print(f"Crack geometry report: {drawn['report']}")
    e = drawn["exported"]
    print(f"Findings on the map: {e['output']} ({e['on_ground']} cracks placed on the ground, as their lines; "
          f"open it in any GIS tool).")
    if cfg.adapt:
        adapted = adapt_demo(done["card"], cfg.output, verbose=cfg.verbose)
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

    commands = (
        ("train", "fine-tune ResNet50 with Ray Train and write <output>/model/", TrainConfig, cmd_train),
        ("evaluate", "metrics of a model on a labelled tree", EvaluateConfig, cmd_evaluate),
        ("explain", "Grad-CAM heatmap: which pixels made the model say crack (PNG)", ExplainConfig, cmd_explain),
        ("report", "HTML report (self-contained) and PNG figures of a model, an evaluation set and scoring results",
         ReportConfig, cmd_report),
        ("promote", "move a registry alias (the model in service) to a model, only when it is no worse on the "
                    "named labelled surfaces", PromoteConfig, cmd_promote),
        ("score", "score images from storage with Ray Data and commit them to the results table (Delta Lake)",
         ScoreConfig, cmd_score),
        ("query", "SQL over committed scoring results (views: images, tiles, current, ...)", QueryConfig, cmd_query),
        ("export", "the findings (cracks and cracked images, with where they lie) as GeoParquet, GeoJSON or CSV",
         ExportConfig, cmd_export),
        ("compact", "merge the results table's small files and vacuum unreferenced ones (holds the scoring lease)",
         CompactConfig, cmd_compact),
        ("demo", "train on the dev set (or generated images), score a small survey and write the report, on a "
                 "local Ray", DemoConfig, cmd_demo),
    )
    for name, help_text, settings, run in commands:
        command = sub.add_parser(name, help=help_text)
        add_arguments(command, settings)
        command.set_defaults(run=run)
    review = sub.add_parser("review", help="inspectors in the loop: select photos for review, export them to Label "
                                           "Studio, import the verdicts and measure the model in the field")
    steps = review.add_subparsers(dest="step", required=True,
                                  parser_class=functools.partial(argparse.ArgumentParser, allow_abbrev=False))
    for name, help_text, settings, run in REVIEW_STEPS:
        step = steps.add_parser(name, help=help_text)
        add_arguments(step, settings)
        step.set_defaults(run=run)
    return parser


REVIEW_STEPS = (
    ("select", "pick tonight's photos for review: the uncertain, the severe, drifted nights, and a random share",
     ReviewSelectConfig, cmd_review_select),
    ("export", "the selection as Label Studio tasks with the model's verdicts and masks", ReviewExportConfig,
     cmd_review_export),
    ("import", "Label Studio's export back: labelled trees, conflicts, and the model measured in the field",
     ReviewImportConfig, cmd_review_import),
)


def _terminate(signum, frame) -> None:
    raise Terminated()


# The flags that name a storage location, checked before any command runs (``storage.check_location``).
LOCATION_ARGUMENTS = ("data", "output", "model", "input", "input_prefix", "results", "masks", "base_model", "weights",
                      "camera_table", "review", "labels")


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
