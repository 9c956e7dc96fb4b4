"""Accounting plots as PNG, drawn with matplotlib's Agg backend (no display, no pyplot state).

DIRAC's look: stacked bars over the time buckets, one colour per group (the largest first, the
smallest ones folded into "others"), the title with the time span and the bucket width under it,
the unit on the y axis and a legend with each group's total. Each plot makes its own ``Figure``
(no global pyplot figure), so plots drawn in several server threads do not mix.
"""

from __future__ import annotations

import datetime as dt
import io
import threading
from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vmdirac.accounting.reports import DAY, totals

MAX_GROUPS = 15          # the rest are stacked as "others"
MAX_BARS = 200           # more buckets than this are drawn as stacked steps (thousands of bars are slow)
SIZE = (9.0, 5.0)        # inches
DPI = 100
# matplotlib's font and text caches are shared by every figure: one plot drawn at a time.
_LOCK = threading.Lock()


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def _utc(epoch: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc)


def top_groups(series: Mapping[str, Sequence[float]], limit: int = MAX_GROUPS) -> dict[str, list[float]]:
    """The ``limit - 1`` largest series by total, the others summed as "others" (when more)."""
    ranked = sorted(series, key=lambda g: (-sum(series[g]), g))
    if len(ranked) <= limit:
        return {g: list(series[g]) for g in ranked}
    keep, rest = ranked[:limit - 1], ranked[limit - 1:]
    out = {g: list(series[g]) for g in keep}
    out["others"] = [sum(vals) for vals in zip(*(series[g] for g in rest))]
    return out


def report_png(report: Mapping) -> bytes:
    """A report dict (``DataStore.getReport``'s) as stacked bars over its buckets."""
    times: list[int] = list(report["times"])
    width_s = int(report["bucket_seconds"])
    groups = top_groups(report["series"])
    total = totals({"series": groups})
    end = _utc(times[-1] + width_s) if times else None
    with _LOCK:
        fig = Figure(figsize=SIZE, dpi=DPI)
        ax = fig.add_subplot(1, 1, 1)
        xs = [_utc(t) for t in times]
        bottom = [0.0] * len(times)
        bar_width = dt.timedelta(seconds=width_s * 0.9) / dt.timedelta(days=1)   # in days, matplotlib's unit
        colors = _colors(len(groups))
        many = len(times) > MAX_BARS
        edges = [*xs, end] if times else []
        for (group, values), color in zip(groups.items(), colors):
            label = f"{group or '(none)'}  {_figure(total[group])}"
            top = [b + v for b, v in zip(bottom, values)]
            if many:   # thousands of bars take matplotlib tens of seconds; stacked steps look the same
                ax.fill_between(edges, [*bottom, bottom[-1]], [*top, top[-1]], step="post", color=color,
                                label=label, linewidth=0)
            else:
                ax.bar(xs, values, width=bar_width, bottom=bottom, align="edge", color=color, label=label,
                       linewidth=0)
            bottom = top
        span = f"{xs[0]:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC" if times else ""
        ax.set_title(f"{report['title']} by {report['grouping']}\n{span}, "
                     f"{'daily' if width_s >= DAY else 'hourly'} buckets", fontsize=11)
        ax.set_ylabel(report["unit"])
        ax.set_ylim(bottom=0)
        if xs:
            ax.set_xlim(xs[0], end)
        ax.grid(axis="y", alpha=0.3)
        fig.autofmt_xdate()
        if groups:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
                      title=report["grouping"])
        else:
            ax.text(0.5, 0.5, "no records in this time span", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        return _png(fig)


def load_vs_jobs_png(times: Sequence[dt.datetime], loads: Sequence[float], jobs: Sequence[float],
                     title: str) -> bytes:
    """One VM's history: load (line, left axis) and running jobs (steps, right axis) over time."""
    if not len(times) == len(loads) == len(jobs):
        raise ValueError("times, loads and jobs must have the same length")
    with _LOCK:
        fig = Figure(figsize=SIZE, dpi=DPI)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(list(times), list(loads), color="tab:blue", marker=".", label="load")
        ax.set_ylabel("load average", color="tab:blue")
        ax.set_ylim(bottom=0)
        right = ax.twinx()
        right.step(list(times), list(jobs), where="post", color="tab:orange", label="running jobs")
        right.set_ylabel("running jobs", color="tab:orange")
        right.set_ylim(bottom=0, top=max([1.0, *jobs]) * 1.2)
        ax.set_title(title, fontsize=11)
        ax.grid(alpha=0.3)
        if not times:
            ax.text(0.5, 0.5, "no history", ha="center", va="center", transform=ax.transAxes)
        else:
            from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

            # Concise labels read "07:34:45" over a minute and "Nov 27" over days, never
            # "34:45.000000" as the default formatter writes a short span.
            locator = AutoDateLocator(tz=dt.timezone.utc)
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=dt.timezone.utc))
        ax.set_xlabel("time (UTC)")
        lines = ax.get_lines() + right.get_lines()
        ax.legend(lines, [line.get_label() for line in lines], loc="upper left", fontsize=8, framealpha=0.8)
        fig.tight_layout()
        return _png(fig)


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def _figure(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 or float(value).is_integer() else f"{value:,.2f}"
