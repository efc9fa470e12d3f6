"""Metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from pld.errors import ConfigError, DataError
from pld.metrics import (
    bootstrap_ci,
    macro_f1,
    paired_bootstrap_delta,
    percentile,
    percentile_interval,
    score,
)

LABELS = ["a", "b", "c"]


def test_score_by_hand() -> None:
    gold = ["a", "a", "b", "b", "c", "c"]
    pred = ["a", "b", "b", "b", "a", "c"]
    r = score(gold, pred, LABELS)
    assert r.n == 6 and r.accuracy == pytest.approx(4 / 6)
    # a: P=1/2 R=1/2 F=.5 ; b: P=2/3 R=1 F=.8 ; c: P=1 R=1/2 F=2/3
    assert r.per_label["a"].f1 == pytest.approx(0.5)
    assert r.per_label["b"].f1 == pytest.approx(0.8)
    assert r.per_label["c"].f1 == pytest.approx(2 / 3)
    assert r.macro_f1 == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert r.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_constant_predictor_macro_f1() -> None:
    gold = ["a"] * 5 + ["b"] * 5 + ["c"] * 5
    assert macro_f1(gold, ["a"] * 15, LABELS) == pytest.approx((2 * (1 / 3) / (1 + 1 / 3)) / 3)


def test_unknown_label_is_an_error() -> None:
    with pytest.raises(DataError, match="'d'"):
        score(["a"], ["d"], LABELS)


def test_bootstrap_interval_brackets_the_estimate() -> None:
    gold = ["a", "b", "c"] * 20
    pred = ["a", "b", "a"] * 20
    lo, hi = bootstrap_ci(gold, pred, LABELS, metric="accuracy", n_boot=300)
    assert lo <= 2 / 3 <= hi and hi - lo < 0.4


def test_percentile_is_nearest_rank_of_a_known_list() -> None:
    xs = [9.0, 1.0, 7.0, 3.0, 5.0]  # sorted: 1 3 5 7 9
    assert percentile(xs, 0.0) == 1.0 and percentile(xs, 1.0) == 9.0
    assert percentile(xs, 0.5) == 5.0
    assert percentile(xs, 0.3) == 3.0  # index round(1.2) = 1: no interpolation
    assert percentile(xs, 0.9) == 9.0  # index round(3.6) = 4: rounded, not floored
    assert percentile(list(range(1, 21)), 0.95) == 19.0  # index round(18.05) = 18
    assert percentile([2.0], 0.95) == 2.0
    assert xs == [9.0, 1.0, 7.0, 3.0, 5.0]  # the input is not sorted in place


def test_percentile_refuses_bad_input() -> None:
    with pytest.raises(DataError, match="no values"):
        percentile([], 0.5)
    with pytest.raises(ConfigError, match="0.95 for p95"):
        percentile([1.0], 95)


def test_percentile_interval_of_a_known_list() -> None:
    assert percentile_interval(np.arange(101.0), alpha=0.1) == (5.0, 95.0)
    assert percentile_interval([3.0] * 7) == (3.0, 3.0)


def test_paired_delta_brackets_the_estimate_and_is_antisymmetric() -> None:
    gold = ["a", "b", "c"] * 20
    good = ["a", "b", "c"] * 18 + ["a", "a", "a"] * 2  # 56 of 60 right
    poor = ["a", "b", "a"] * 20  # 40 of 60 right
    d = paired_bootstrap_delta(gold, good, poor, LABELS, n_boot=300)
    assert d.accuracy == pytest.approx(56 / 60 - 40 / 60)
    assert d.macro_f1 == pytest.approx(macro_f1(gold, good, LABELS) - macro_f1(gold, poor, LABELS))
    assert d.macro_f1_ci[0] <= d.macro_f1 <= d.macro_f1_ci[1]
    assert d.accuracy_ci[0] <= d.accuracy <= d.accuracy_ci[1]
    assert d.macro_f1_ci[0] > 0 and d.accuracy_ci[0] > 0  # the better system, clearly
    r = paired_bootstrap_delta(gold, poor, good, LABELS, n_boot=300)
    assert r.macro_f1 == -d.macro_f1 and r.accuracy == -d.accuracy
    assert r.macro_f1_ci == pytest.approx((-d.macro_f1_ci[1], -d.macro_f1_ci[0]), abs=1e-12)
    assert r.accuracy_ci == pytest.approx((-d.accuracy_ci[1], -d.accuracy_ci[0]), abs=1e-12)
    same = paired_bootstrap_delta(gold, poor, poor, LABELS, n_boot=50)
    assert same.macro_f1_ci == same.accuracy_ci == (0.0, 0.0)  # paired: every resample cancels


def test_paired_delta_resamples_the_same_records_for_both() -> None:
    """Against the slow definition: per resample, macro_f1 of a minus macro_f1 of b on the
    same drawn records (the seed's draw, as the function documents)."""
    rng = np.random.default_rng(3)
    names = np.array(LABELS)
    gold, a, b = (names[rng.integers(0, 3, 25)].tolist() for _ in range(3))
    n_boot, seed = 40, 7
    idx = np.random.default_rng(seed).integers(0, 25, (n_boot, 25))
    slow = [
        macro_f1([gold[i] for i in row], [a[i] for i in row], LABELS)
        - macro_f1([gold[i] for i in row], [b[i] for i in row], LABELS)
        for row in idx
    ]
    d = paired_bootstrap_delta(gold, a, b, LABELS, n_boot=n_boot, seed=seed)
    assert d.macro_f1_ci == pytest.approx(percentile_interval(slow), abs=1e-12)
    assert d != paired_bootstrap_delta(gold, a, b, LABELS, n_boot=n_boot, seed=seed + 1)


def test_paired_delta_refuses_bad_input() -> None:
    with pytest.raises(DataError, match="3 gold labels but 2 and 3"):
        paired_bootstrap_delta(["a", "b", "c"], ["a", "b"], ["a", "b", "c"], LABELS)
    with pytest.raises(DataError, match="'d'"):
        paired_bootstrap_delta(["a"], ["d"], ["a"], LABELS)
    with pytest.raises(DataError, match="no records"):
        paired_bootstrap_delta([], [], [], LABELS)
    with pytest.raises(ConfigError, match="n_boot is 0"):
        paired_bootstrap_delta(["a"], ["a"], ["a"], LABELS, n_boot=0)
