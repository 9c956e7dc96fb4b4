"""Plots: real PNGs of the size we ask, from the report dicts (whose values the report tests check)."""

from __future__ import annotations

import datetime as dt
import struct
from concurrent.futures import ThreadPoolExecutor

import pytest

from vmdirac.accounting.plots import DPI, SIZE, load_vs_jobs_png, report_png, top_groups

PNG = b"\x89PNG\r\n\x1a\n"
E0 = int(dt.datetime(2024, 5, 2, tzinfo=dt.timezone.utc).timestamp())


def size_of(png: bytes) -> tuple[int, int]:
    assert png.startswith(PNG)
    assert png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


def report(series: dict, bucket: int = 3600, n: int = 24) -> dict:
    return {"name": "jobs", "title": "Jobs", "unit": "jobs", "grouping": "Site", "bucket_seconds": bucket,
            "times": [E0 + i * bucket for i in range(n)], "series": series}


def test_a_report_plot_is_a_png_of_the_expected_size():
    png = report_png(report({"LCG.CERN.ch": [float(i % 5) for i in range(24)], "LCG.IN2P3.fr": [1.0] * 24}))
    assert size_of(png) == (int(SIZE[0] * DPI), int(SIZE[1] * DPI))
    assert len(png) > 10000


def test_different_figures_make_different_plots_and_empty_reports_still_plot():
    a = report_png(report({"S1": [1.0] * 24}))
    b = report_png(report({"S1": [5.0] * 24}))
    assert a != b
    empty = report_png(report({}, bucket=86400, n=7))
    assert size_of(empty) == size_of(a)


def test_many_groups_are_folded_into_others_largest_first():
    series = {f"site{i:02d}": [float(i)] * 3 for i in range(20)}
    kept = top_groups(series, limit=5)
    assert list(kept) == ["site19", "site18", "site17", "site16", "others"]
    assert kept["others"] == [float(sum(range(16)))] * 3
    assert sum(sum(v) for v in kept.values()) == sum(sum(v) for v in series.values())


def test_plots_drawn_in_threads_are_all_good():
    with ThreadPoolExecutor(4) as pool:
        pngs = list(pool.map(lambda k: report_png(report({"S": [float(k)] * 24})), range(8)))
    assert all(p.startswith(PNG) for p in pngs) and len(set(pngs)) == 8


def test_load_vs_jobs_plot_of_one_vm():
    times = [dt.datetime(2024, 5, 2, 10, m, tzinfo=dt.timezone.utc) for m in range(0, 60, 5)]
    png = load_vs_jobs_png(times, [0.1 * i for i in range(12)], [i % 3 for i in range(12)], "pod1-12 (Running)")
    assert size_of(png) == (900, 500) and len(png) > 10000
    assert load_vs_jobs_png([], [], [], "no history yet").startswith(PNG)
    with pytest.raises(ValueError, match="same length"):
        load_vs_jobs_png(times, [1.0], [1], "bad")
