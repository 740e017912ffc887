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
from typing import Any, get_args, get_origin, get_type_hints

REQUIRED = dataclasses.MISSING  # a field without a default: its flag must be given


def option(default: Any, help: str, **extra: Any) -> Any:
    """A setting: its default (``REQUIRED`` for none), its flag's help, and how the flag reads:

    ``range``: a ``numbers.Range`` every value must lie in (checked by ``numbers.check_fields``);
    ``choices``: the values allowed; ``aliases``: other spellings of the flag (``("--out",)``);
    ``positional``: an argument without a flag; ``metavar``: how the help names the value.
    A ``tuple[str, ...]`` field is a repeatable flag, one value each time it is given.
    """
    return field(default=default, metadata={"help": help, **extra})


def add_arguments(parser: argparse.ArgumentParser, cls: type, **defaults: Any) -> None:
    """Add one flag per dataclass field; fields without a default are required."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        default = defaults.get(f.name, f.default)
        required = default is dataclasses.MISSING
        help_text = meta.get("help", "")
        if meta.get("positional"):
            parser.add_argument(f.name, help=help_text, metavar=meta.get("metavar"))
            continue
        names = ["--" + f.name.replace("_", "-"), *meta.get("aliases", ())]
        extra = {"dest": f.name}
        if meta.get("metavar"):
            extra["metavar"] = meta["metavar"]
        if hints[f.name] is bool:
            parser.add_argument(*names, action="store_true", default=bool(default), help=help_text, **extra)
            continue
        if get_origin(hints[f.name]) is tuple:
            parser.add_argument(*names, action="append", required=required, default=None, help=help_text, **extra)
            continue
        hint = next((a for a in get_args(hints[f.name]) if a is not type(None)), hints[f.name])  # Optional[X]: X
        kind = {int: int, float: float}.get(hint, str)
        shown = "" if required or default is None or "default" in help_text else f" (default: {default})"
        parser.add_argument(*names, type=kind, required=required, default=None if required else default,
                            choices=meta.get("choices"), help=help_text + shown, **extra)


def from_arguments(cls: type, args: argparse.Namespace) -> Any:
    """The settings the parsed flags name; the dataclass's own checks run here, before any work."""
    hints = get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name)
        if get_origin(hints[f.name]) is tuple:
            value = tuple(value) if value is not None else (f.default if f.default is not dataclasses.MISSING else ())
        values[f.name] = value
    return cls(**values)
