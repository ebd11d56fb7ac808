"""The scorecard as Markdown or a self-contained HTML page (inline styles and SVG charts, so it
can be mailed or archived and shows the same everywhere: nothing is fetched when it opens)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jinja2

from trustplane.outcomes.scorecard import Scorecard

__all__ = ["render_html", "render_markdown", "trend_points"]

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("trustplane.outcomes", "templates"),
    autoescape=jinja2.select_autoescape(["html.j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
)
_ENV.filters["stamp"] = lambda ts: datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def render_markdown(card: Scorecard) -> str:
    return _ENV.get_template("scorecard.md.j2").render(card=card.as_dict())


def render_html(card: Scorecard, history: list[dict[str, Any]]) -> str:
    """The page for `card`, with a trend chart per figure over the stored months (`history`,
    oldest first; the card's own month is taken from `card`, not from a stored copy)."""
    months = [h for h in history if h.get("period") != card.period] + [card.as_dict()]
    charts = {f.key: trend_points(months, f.key) for f in card.figures}
    return _ENV.get_template("scorecard.html.j2").render(
        card=card.as_dict(), charts=charts, months=[m["period"] for m in months]
    )


def trend_points(
    months: list[dict[str, Any]], key: str, width: int = 160, height: int = 40
) -> dict[str, Any]:
    """A polyline of `key`'s value over `months` (None where it was not measured), scaled to
    the box; `points` is empty when fewer than two months have a value."""
    values: list[tuple[int, float]] = []
    for index, month in enumerate(months):
        figure = next((f for f in month.get("figures", []) if f.get("key") == key), None)
        if figure is not None and isinstance(figure.get("value"), int | float):
            values.append((index, float(figure["value"])))
    if len(values) < 2:
        return {"points": "", "width": width, "height": height, "last": None}
    low, high = min(v for _, v in values), max(v for _, v in values)
    span = (high - low) or 1.0
    step = width / max(1, len(months) - 1)
    points = " ".join(
        f"{index * step:.1f},{height - 4 - (value - low) / span * (height - 8):.1f}"
        for index, value in values
    )
    return {"points": points, "width": width, "height": height, "last": values[-1][1]}
