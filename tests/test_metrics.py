"""Evaluation metrics: pass@k against the closed form and brute-force enumeration, avg@k and maj@k by hand."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from steer.metrics import avg_at_k, benchmark_metrics, maj_at_k, normalize_answer, pass_at_k

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (2, 1, 1, 0.5),
        (5, 0, 3, 0.0),
        (5, 5, 3, 1.0),
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (10, 3, 8, 1.0),  # fewer than 8 wrong samples: every 8-subset has a correct one
        (32, 1, 1, 1 / 32),
        (200, 7, 10, 1 - math.comb(193, 10) / math.comb(200, 10)),
    ],
)
def test_pass_at_k_hand_cases(n: int, c: int, k: int, expected: float):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_closed_form(nck: tuple[int, int, int]):
    n, c, k = nck
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-9)


@given(st.integers(1, 9).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_is_the_subset_probability(nck: tuple[int, int, int]):
    # brute force: the share of k-subsets of the n samples that contain a correct one
    n, c, k = nck
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_pass_at_one_is_the_mean_and_bad_arguments_raise():
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8) == avg_at_k([1, 1, 1, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_avg_at_k_uses_the_first_k():
    assert avg_at_k([True, False, True, True]) == 0.75
    assert avg_at_k([True, False, True, True], k=2) == 0.5
    with pytest.raises(ValueError, match="at least 8"):
        avg_at_k([True], k=8)


def test_maj_at_k_hand_cases():
    # "1/2" wins 3 votes to 2 and is right
    assert maj_at_k(["1/2", "2", "1/2", "2", "1/2"], [True, False, True, False, True]) == 1.0
    # the majority is wrong even though some samples are right
    assert maj_at_k(["3", "3", "4"], [False, False, True]) == 0.0
    # a tie goes to the answer voted first; None does not vote
    assert maj_at_k([None, "4", "3", "3", "4", None], [False, True, False, False, True, False]) == 1.0
    assert maj_at_k([None, None], [False, False]) == 0.0
    # only the first k samples vote
    assert maj_at_k(["5", "6", "6", "6"], [True, False, False, False], k=1) == 1.0
    # votes count forms that differ only in spacing or \dfrac as one answer
    assert maj_at_k(["\\dfrac{1}{2}", "7", "\\frac{1}{2} "], [True, False, True]) == 1.0


def test_normalize_answer():
    assert normalize_answer("\\left( 1, 2 \\right).") == "(1,2)"
    assert normalize_answer("3\\,000") == "3000"
    assert normalize_answer("0.5") != normalize_answer("\\frac12")


def test_benchmark_metrics_names_and_values():
    correct = [[True, False, False, False], [True, True, True, True], [False] * 4]
    answers = [["1", "2", "2", "3"], ["5"] * 4, [None] * 4]
    m = benchmark_metrics(correct, answers, pass_ks=(1, 2), prefix="eval/aime24")
    assert m == pytest.approx(
        {
            "eval/aime24/avg_at_4": (0.25 + 1 + 0) / 3,
            "eval/aime24/pass_at_1": (0.25 + 1 + 0) / 3,
            "eval/aime24/pass_at_2": (0.5 + 1 + 0) / 3,
            "eval/aime24/maj_at_4": (0 + 1 + 0) / 3,
            "eval/aime24/num_problems": 3.0,
        }
    )
    assert all(set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789_/.-") for name in m)
    with pytest.raises(ValueError, match="same"):
        benchmark_metrics([[True], [True, False]])
