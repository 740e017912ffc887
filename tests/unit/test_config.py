"""Settings are declared once: every command's flags are built from its frozen dataclass, with help, default and
check, and a bad value is refused in a sentence before any work."""

import argparse
import dataclasses
import math

import pytest

from cracknet.cli import build_parser
from cracknet.config import add_arguments, from_arguments
from cracknet.errors import CracknetError
from cracknet.predict.evaluate import EvaluateConfig
from cracknet.predict.explain import ExplainConfig
from cracknet.predict.promote import PromoteConfig
from cracknet.table.compact import DEFAULT_RETENTION_HOURS, CompactConfig
from cracknet.table.export import ExportConfig
from cracknet.table.query import QueryConfig


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_parser_adds_nothing_the_settings_do_not_declare():
    """A flag added by hand to the parser (not a dataclass field) fails here: config is the only home of a flag."""
    from cracknet.demo.run import DemoConfig
    from cracknet.report.build import ReportConfig
    from cracknet.score.config import ScoreConfig
    from cracknet.train.config import TrainConfig

    owners = {"train": TrainConfig, "evaluate": EvaluateConfig, "explain": ExplainConfig, "report": ReportConfig,
              "promote": PromoteConfig, "score": ScoreConfig, "query": QueryConfig, "compact": CompactConfig, "export": ExportConfig,
              "demo": DemoConfig}
    from cracknet.review.loop import ReviewExportConfig, ReviewImportConfig, ReviewSelectConfig

    commands = subcommands()
    assert set(commands) == set(owners) | {"review"}
    steps = next(a for a in commands.pop("review")._actions if isinstance(a, argparse._SubParsersAction)).choices
    owners.update({"select": ReviewSelectConfig, "export-tasks": ReviewExportConfig, "import": ReviewImportConfig})
    commands.update({"select": steps["select"], "export-tasks": steps["export"], "import": steps["import"]})
    for name, parser in commands.items():
        dests = {a.dest for a in parser._actions if a.dest != "help"}
        assert dests == {f.name for f in dataclasses.fields(owners[name])}, name


def test_repeated_positional_aliased_and_chosen_flags_read_into_the_settings():
    parser = argparse.ArgumentParser()
    add_arguments(parser, EvaluateConfig)
    cfg = from_arguments(EvaluateConfig, parser.parse_args(["--model", "m", "--data", "a=x", "--data", "b=y"]))
    assert cfg.data == ("a=x", "b=y") and cfg.recall_confidence == 0.95 and cfg.record is False

    parser = argparse.ArgumentParser()
    add_arguments(parser, ExplainConfig)
    cfg = from_arguments(ExplainConfig, parser.parse_args(["--model", "m", "wall.jpg", "--out", "o.png"]))
    assert (cfg.image, cfg.output, cfg.mm_per_pixel) == ("wall.jpg", "o.png", None)

    parser = argparse.ArgumentParser()
    add_arguments(parser, QueryConfig)
    cfg = from_arguments(QueryConfig, parser.parse_args(["--results", "r", "SELECT 1", "--format", "csv"]))
    assert (cfg.sql, cfg.format, cfg.timeout) == ("SELECT 1", "csv", 300.0)
    with pytest.raises(SystemExit):
        parser.parse_args(["--results", "r", "SELECT 1", "--format", "xml"])

    parser = argparse.ArgumentParser()
    add_arguments(parser, PromoteConfig)
    assert from_arguments(PromoteConfig, parser.parse_args(["--model", "m"])).data == ()


@pytest.mark.parametrize("make, message", [
    (lambda: CompactConfig(results="r", retention_hours=-1), "--retention-hours"),
    (lambda: CompactConfig(results="r", lease_seconds=math.nan), "--lease-seconds"),
    (lambda: QueryConfig(results="r", sql="SELECT 1", timeout=0), "--timeout"),
    (lambda: ExplainConfig(model="m", image="i", output="o", mm_per_pixel=0.0), "--mm-per-pixel"),
    (lambda: ExplainConfig(model="m", image="i", output="o", width_classes="fine:nope"), "width"),
    (lambda: EvaluateConfig(model="m", data=("x",), tile_size=3), "--tile-size"),
    (lambda: EvaluateConfig(model="m", data=("x",), target_recall=1.5), "--target-recall"),
    (lambda: EvaluateConfig(model="m", data=("x",), group_by="(unclosed"), "--group-by"),
    (lambda: PromoteConfig(model="m", alias="latest"), "alias"),
])
def test_bad_settings_are_refused_in_a_sentence_naming_the_flag(make, message):
    with pytest.raises(CracknetError, match=message):
        make()


def test_defaults_live_in_one_place():
    assert CompactConfig(results="r").retention_hours == DEFAULT_RETENTION_HOURS
    compact = subcommands()["compact"]
    assert compact.get_default("retention_hours") == DEFAULT_RETENTION_HOURS
