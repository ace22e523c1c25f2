"""Click types for numeric options: finite, in range, and sane, refused at parse time.

Why: click's FloatRange lets `nan` through (it compares false with every bound) and, without
a maximum, `inf`; both then surface deep in the model as a traceback (`predict --memory inf`
was a 35-line OverflowError). These types refuse them while parsing, so a bad number is a
one-line usage error, exit 2, before anything is opened or changed. A maximum is always
set: a value beyond it is a typo, not a request.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

import click

ABSURD = 1e12  # the default ceiling for a float option that names no maximum


def _refuse(message: str, ctx: click.Context | None) -> NoReturn:
    """A usage error whose text names the option itself (click's BadParameter would prefix
    "Invalid value for '--x': " and the line would name it twice)."""
    raise click.UsageError(message, ctx)


def _name(param: click.Parameter | None) -> str:
    opts = getattr(param, "opts", None) or ["value"]
    return str(max(opts, key=len))


def _bound_words(low: float | None, high: float | None, low_open: bool,
                 high_open: bool) -> str:
    words = []
    if low is not None:
        words.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        words.append(f"{'<' if high_open else '<='} {high:g}")
    return " and ".join(words)


class Finite(click.ParamType):  # type: ignore[type-arg]
    """A finite float in [min, max] (bounds optionally open); errors read
    "--memory must be > 0 and <= 16777216, got -1"."""

    name = "number"

    def __init__(self, min: float | None = None, max: float | None = ABSURD,  # noqa: A002
                 min_open: bool = False, max_open: bool = False) -> None:
        self.min, self.max = min, ABSURD if max is None else max
        self.min_open, self.max_open = min_open, max_open

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            _refuse(f"{_name(param)} must be a number, got {value!r}", ctx)
        if not math.isfinite(number):
            _refuse(f"{_name(param)} must be a finite number, got {value!r}", ctx)
        low = self.min is not None and (number <= self.min if self.min_open
                                        else number < self.min)
        high = self.max is not None and (number >= self.max if self.max_open
                                         else number > self.max)
        if low or high:
            bounds = _bound_words(self.min, self.max, self.min_open, self.max_open)
            _refuse(f"{_name(param)} must be {bounds}, got {value}", ctx)
        return number


class Count(click.ParamType):  # type: ignore[type-arg]
    """A whole number in [min, max]."""

    name = "integer"

    def __init__(self, min: int, max: int) -> None:  # noqa: A002
        self.min, self.max = min, max

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        try:
            text = str(value).strip()
            if "_" in text:
                raise ValueError(text)
            number = int(text, 10)
        except ValueError:
            _refuse(f"{_name(param)} must be a whole number, got {value!r}", ctx)
        if not self.min <= number <= self.max:
            low = "> 0" if self.min == 1 else f">= {self.min}"
            _refuse(f"{_name(param)} must be {low} and <= {self.max}, got {value}", ctx)
        return number


def positive(max: float = ABSURD) -> Finite:  # noqa: A002
    """(0, max]."""
    return Finite(min=0, min_open=True, max=max)


def non_negative(max: float = ABSURD) -> Finite:  # noqa: A002
    """[0, max]."""
    return Finite(min=0, max=max)


def count(min: int = 1, max: int = 1_000_000) -> Count:  # noqa: A002
    """A whole number in [min, max]."""
    return Count(min, max)


MIB_MAX = 1 << 24  # 16 TiB of guest memory
PAGES_S_MAX = 1e9
MIB_S_MAX = 1e6  # about 8 Tbit/s
MBIT_MAX = 1e7
MS_MAX = 1e7  # ~2.8 hours
SECONDS_MAX = 7 * 86400.0
