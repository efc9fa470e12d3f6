"""Metrics against hand-computed values."""

from __future__ import annotations

import pytest

from pld.errors import DataError
from pld.metrics import bootstrap_ci, macro_f1, score

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
