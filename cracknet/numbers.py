"""Numbers from outside (flags, manifest cells, model cards), checked in one place: finite and in range.

    LEASE = Range(1, 86_400)
    seconds = checked("--lease-seconds", value, LEASE)     # NaN, infinities and 0 are refused with a sentence

A setting's range is declared once, on its config field (``range=`` in its metadata) or as a constant here
beside the others, and ``check_fields`` checks every numeric field of a frozen config on construction.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, get_args, get_type_hints

from cracknet.errors import CracknetError


@dataclass(frozen=True)
class Range:
    """An interval of allowed values; ``None`` for an open end."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False   # low itself is excluded
    high_open: bool = False  # high itself is excluded

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'above' if self.low_open else 'at least'} {self.low:g}"
        if self.high is not None:
            return f"{'below' if self.high_open else 'at most'} {self.high:g}"
        return "a finite number"


ANY = Range()
POSITIVE = Range(0, None, low_open=True)
NOT_NEGATIVE = Range(0)
SHARE = Range(0, 1)                                    # a share or probability, ends included
# Settings several commands take, declared once.
LEASE_SECONDS = Range(1, 7 * 86_400)                   # a lease renewed every few seconds, up to a week
MM_PER_PIXEL = Range(1e-3, 1e3)                        # 1 µm (microscopy) to 1 m (satellite) per pixel


def checked(name: str, value: Any, allowed: Range = ANY) -> float:
    """``value`` as a float when it is a finite number in ``allowed``; else a sentence naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise CracknetError(f"{name} must be a number {allowed.describe()}, got {value!r}.") from None
    else:
        number = float(value)
    if not math.isfinite(number):
        raise CracknetError(f"{name} must be a finite number {allowed.describe()}, got {value!r}.")
    if number not in allowed:
        raise CracknetError(f"{name} must be {allowed.describe()}, got {value!r}.")
    return number


def flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def check_fields(config: Any) -> None:
    """Every int and float field of a config dataclass: finite, and inside its ``range`` metadata where it has
    one (``None`` passes for Optional fields)."""
    hints = get_type_hints(type(config))
    for f in dataclasses.fields(config):
        kind = numeric_kind(hints[f.name])
        value = getattr(config, f.name)
        if kind is None or value is None:
            continue
        number = checked(flag(f.name), value, f.metadata.get("range", ANY))
        if kind is int and number != int(number):
            raise CracknetError(f"{flag(f.name)} must be a whole number, got {value!r}.")


def numeric_kind(hint: Any) -> type | None:
    """int or float for a field of that type (Optional included); None for any other."""
    options = [a for a in get_args(hint) if a is not type(None)] if get_args(hint) else [hint]
    if len(options) == 1 and options[0] in (int, float) and options[0] is not bool:
        return options[0]
    return None

