"""Templates (Jinja2, autoescaped) and the formatting the pages share: dates, statuses."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import jinja2

__all__ = ["Templates", "exact_time", "relative_time"]

_UNITS = (
    (timedelta(days=365), "year"),
    (timedelta(days=30), "month"),
    (timedelta(days=7), "week"),
    (timedelta(days=1), "day"),
    (timedelta(hours=1), "hour"),
    (timedelta(minutes=1), "minute"),
)


def relative_time(when: datetime, now: datetime) -> str:
    """``"3 days ago"``, ``"in 2 months"``, ``"just now"``."""
    delta = now - when
    future = delta < timedelta(0)
    span = -delta if future else delta
    for size, unit in _UNITS:
        if span >= size:
            count = int(span // size)
            text = f"{count} {unit}{'' if count == 1 else 's'}"
            return f"in {text}" if future else f"{text} ago"
    return "in a minute" if future else "just now"


def exact_time(when: datetime) -> str:
    """The exact time, in UTC, for a ``title`` (shown on hover)."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@jinja2.pass_context
def _ago(context: Mapping[str, Any], when: datetime) -> str:
    now: datetime = context["now"]
    return relative_time(when, now)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds")


class Templates:
    """The pages' templates, escaping every value put in them (autoescape)."""

    def __init__(self) -> None:
        self._env = jinja2.Environment(
            loader=jinja2.PackageLoader("apitokens.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._env.filters.update(ago=_ago, exact=exact_time, iso=_iso)

    def render(self, name: str, values: Mapping[str, Any]) -> str:
        """Render the template ``name`` with ``values``."""
        return self._env.get_template(name).render(values)
