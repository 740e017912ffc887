"""Settings as frozen dataclasses, and command-line flags built from their fields.

    @dataclass(frozen=True)
    class ScoreConfig:
        batch_size: int = option(64, "Images per model batch.", range=Range(1, 4096))
    add_arguments(parser, ScoreConfig); cfg = from_arguments(ScoreConfig, parser.parse_args())

Each field's ``help`` metadata is its flag's help text and its ``range`` its check, so a setting is declared
once and the CLI, the Ray job entrypoints and the tests all share it. Each stage keeps its own settings
(``train.config``, ``score.config``); this module is only the mechanism.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import field
from typing import Any, get_args, get_type_hints


def option(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


def add_arguments(parser: argparse.ArgumentParser, cls: type, **defaults: Any) -> None:
    """Add one flag per dataclass field; fields without a default are required."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default)
        required = default is dataclasses.MISSING
        help_text = f.metadata.get("help", "")
        if hints[f.name] is bool:
            parser.add_argument(flag, action="store_true", default=bool(default), help=help_text)
            continue
        hint = next((a for a in get_args(hints[f.name]) if a is not type(None)), hints[f.name])  # Optional[X]: X
        kind = {int: int, float: float}.get(hint, str)
        parser.add_argument(
            flag,
            type=kind,
            required=required,
            default=None if required else default,
            help=help_text + ("" if required or default is None or "default" in help_text
                              else f" (default: {default})"),
        )


def from_arguments(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
