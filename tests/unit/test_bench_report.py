"""The benchmarks' figures and verdicts (bench/report.py, bench/importing.py, bench/http.py): the
nearest-rank percentile, the import's constant-memory verdict and the HTTP rows' need of zero
failures. No benchmark runs here; the rows are built from figures given."""

from __future__ import annotations

import pytest

from bench import http, importing
from bench.report import percentile, scale_note


def test_p99_of_a_hundred_samples_is_the_99th_not_the_largest():
    assert percentile(range(1, 101), 0.99) == 99


def test_p50_of_one_to_ten_is_the_5th():
    assert percentile(range(1, 11), 0.50) == 5


def test_p99_of_two_hundred_samples_is_the_198th():
    assert percentile(range(1, 201), 0.99) == 198


def test_a_fraction_binary_floating_point_cannot_hold_exactly_does_not_move_the_rank():
    assert 0.07 * 100 > 7  # the product a rank from floats would round up
    assert percentile(range(1, 101), 0.07) == 7


@pytest.mark.parametrize("fraction, expected", [(0.001, 1), (0.5, 50), (0.501, 51), (1.0, 100)])
def test_the_rank_is_the_ceiling_of_the_fraction_of_the_count_within_one_and_the_count(fraction, expected):
    assert percentile(list(range(100, 0, -1)), fraction) == expected


def test_one_sample_is_every_percentile():
    assert percentile([4.5], 0.01) == percentile([4.5], 0.99) == 4.5


def test_a_size_under_four_fifths_of_the_targets_is_marked_scaled_down():
    assert scale_note(40_000, 1_000_000, "events") == ("at 40,000 events (scaled down; target is for 1,000,000)", True)
    assert scale_note(999_950, 1_000_000, "events") == ("at 999,950 events", False)


def _imported(settled_mb: float | None, full_mb: float, full_events: int = 40_000) -> dict:
    return {"events": full_events, "seconds": full_events / 4_000, "max_rss_kb": full_mb * 1024,
            "settled_events": importing.settled_events(full_events),
            "settled_rss_kb": None if settled_mb is None else settled_mb * 1024}


def _peak_row(results: dict, *, quick: bool = True):
    rows = importing.rows_for("sqlite", results, quick=quick, raw_events_per_s=8_000.0)
    return next(row for row in rows if row.metric.startswith("import: peak RSS"))


def test_the_peak_is_first_read_at_a_tenth_of_the_file_and_never_before_the_page_cache_has_filled():
    assert importing.settled_events(40_000) == importing.SETTLED_EVENTS
    assert importing.settled_events(1_000_000) == 100_000


def test_the_peak_when_read_is_the_first_sample_at_or_past_the_offset():
    samples = [[0, 50_000], [4_000, 90_000], [8_000, 110_000], [12_000, 125_000]]
    assert importing.peak_when_read_kb(samples, 8_000) == 110_000
    assert importing.peak_when_read_kb(samples, 12_001) is None


def test_a_peak_under_the_limit_that_grows_with_the_file_misses_the_target():
    row = _peak_row(_imported(settled_mb=100, full_mb=200))
    assert row.ok is False and "GROWS with the file" in row.note


def test_a_peak_that_stays_flat_past_the_page_cache_meets_the_target_marked_as_scaled_in_a_quick_run():
    row = _peak_row(_imported(settled_mb=119, full_mb=128))
    assert row.ok is True and row.scaled and "constant" in row.note


def test_a_constant_peak_over_the_limit_misses_the_target():
    row = _peak_row(_imported(settled_mb=310, full_mb=312, full_events=1_000_000), quick=False)
    assert row.ok is False and not row.scaled


def test_a_peak_never_sampled_past_the_filling_gives_no_verdict():
    row = _peak_row(_imported(settled_mb=None, full_mb=128))
    assert row.ok is None and "constancy unknown" in row.note


def test_the_import_rate_is_given_as_a_ratio_of_the_raw_limit_measured_in_the_same_run():
    rate_row = importing.rows_for("sqlite", _imported(119, 128), quick=True, raw_events_per_s=8_000.0)[0]
    assert rate_row.value == 4_000 and rate_row.baseline == 8_000 and rate_row.ratio == 0.5 and rate_row.ratio_ok


def test_without_the_ingestion_benchmark_the_import_rate_has_no_ratio():
    rate_row = importing.rows_for("sqlite", _imported(119, 128), quick=True, raw_events_per_s=None)[0]
    assert rate_row.ratio is None and rate_row.ratio_ok is None and "did not run" in rate_row.note


def _http_rows(failures: int) -> dict:
    fast = [1.0] * 2_000
    post = http.Series(requests=2_000, seconds=1.0, latencies_ms=fast, failures=failures)
    health = http.Series(requests=2_000, seconds=0.5, latencies_ms=fast, failures=0)
    return {row.metric: row for row in http.rows_for("sqlite", {"post": post, "health": health}, quick=True)}


def test_fast_posts_none_failed_meet_the_rate_and_p99_targets():
    rows = _http_rows(failures=0)
    assert [row.ok for row in rows.values() if row.ok is not None] == [True, True]


def test_one_failed_post_fails_the_rate_and_the_p99_verdicts_alike():
    rows = _http_rows(failures=1)
    verdicts = {metric: row.ok for metric, row in rows.items() if row.ok is not None}
    assert list(verdicts.values()) == [False, False], verdicts
    assert all("1 of 2,000 failed" in rows[metric].note for metric in verdicts)
