"""Times on the command line: a duration (``--retention 7d``) and a point in time (``--since 2h``).

A duration is a number and one unit: ``s``, ``m``, ``h``, ``d`` or ``w`` (``90s``, ``30m``, ``12h``, ``7d``,
``1.5h``). ``--since`` also takes an ISO 8601 time; ``--retention`` takes a duration only, so a date typed
there is an error instead of a retention computed from today.
"""

from __future__ import annotations

import math
import re
from datetime import datetime

import click

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float | None:
    """Seconds in a duration like ``30m``, ``12h`` or ``7d``; None when ``text`` is not one."""
    m = _DURATION.match(text.strip())
    if m is None:
        return None
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    return seconds if math.isfinite(seconds) else None


def duration_seconds(ctx: click.Context, param: click.Parameter, value: str) -> float:
    """The ``callback=`` of a duration option (``--retention``): seconds of a positive duration, or a click
    error naming the value and the form expected."""
    seconds = parse_duration(value)
    if seconds is None:
        message = f"{value!r} is not a duration: a number and a unit s, m, h, d or w (30m, 12h, 7d)"
        raise click.BadParameter(message, ctx, param)
    if seconds <= 0:
        raise click.BadParameter(f"{value!r} is no time at all: give a positive duration", ctx, param)
    return seconds


def parse_since(text: str, now: float) -> float:
    """``--since``: a duration ago (``30m``, ``2h``, ``7d``) or an ISO 8601 time (``2026-11-28T10:00Z``)."""
    seconds = parse_duration(text)
    if seconds is not None:
        return now - seconds
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither a duration like 2h nor an ISO time") from None
