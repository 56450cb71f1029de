"""The math verifier against a table of (gold, prediction) pairs whose truth is known, plus extraction and rewards.

Where math-verify disagrees with mathematical truth the row is marked ``xfail(strict=True)`` with the reason: the
table records what the reward does, and a math-verify upgrade that fixes the row turns the xfail into a failure that
asks for the mark to be removed.
"""

from __future__ import annotations

import pytest
import torch

from steer.verifiers.math import extract_boxed, rewards_from_correct, verify_math

pytestmark = pytest.mark.unit


def _xfail(gold: str, pred: str, expected: bool, reason: str):
    return pytest.param(gold, pred, expected, marks=pytest.mark.xfail(strict=True, reason=reason))


# (gold answer as a dataset gives it, boxed prediction, mathematically equivalent?)
TABLE = [
    # integers
    ("42", "42", True),
    ("42", "042", True),
    ("-7", "-7", True),
    ("7", "-7", False),
    ("1000", "1,000", True),
    ("1000", "1000.0", True),
    ("12", "13", False),
    # fractions
    ("3/4", "\\frac{3}{4}", True),
    ("3/4", "\\dfrac{3}{4}", True),
    ("3/4", "\\tfrac34", True),
    ("3/4", "6/8", True),
    ("3/4", "4/3", False),
    ("-1/2", "\\frac{-1}{2}", True),
    ("-1/2", "-\\frac12", True),
    # decimals (math-verify rounds to 6 places: 0.3333333 counts as 1/3, 0.333 does not)
    ("3/4", "0.75", True),
    ("0.5", "\\frac{1}{2}", True),
    ("1/3", "0.333", False),
    ("2.50", "2.5", True),
    ("3.14", "\\pi", False),
    # percentages: "75%" and 0.75 are the same number; by the convention of "what percent ...?" questions a bare 75
    # also matches a 75% gold (and a 75% prediction a gold of 75), which math-verify follows
    ("75\\%", "75\\%", True),
    ("75\\%", "0.75", True),
    ("75\\%", "75", True),
    ("75", "75\\%", True),
    ("50\\%", "0.6", False),
    # LaTeX roots
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", True),
    ("\\sqrt{2}/2", "\\frac{1}{\\sqrt{2}}", True),
    ("2\\sqrt{3}", "\\sqrt{12}", True),
    ("\\sqrt{8}", "2\\sqrt{3}", False),
    ("\\sqrt[3]{27}", "3", True),
    ("4+2\\sqrt{3}", "(1+\\sqrt{3})^2", True),
    # intervals
    ("[-1, 1]", "[-1,1]", True),
    ("[-1, 1]", "(-1,1)", False),
    ("(-\\infty, 0)", "(-\\infty,0)", True),
    ("[2, \\infty)", "[2,\\infty)", True),
    ("(0,1]", "(0,1)", False),
    _xfail(
        "[-1, 1]",
        "-1 \\le x \\le 1",
        True,
        "math-verify compares a set with a relation only when the prediction is the set (allow_set_relation_comp)",
    ),
    # sets
    ("\\{1,2\\}", "\\{2,1\\}", True),
    ("\\{1,2\\}", "\\{1,2,3\\}", False),
    ("1,2,3", "3,2,1", True),
    ("\\{-2, 3\\}", "3, -2", True),
    # tuples
    ("(1,2)", "(1, 2)", True),
    ("(1,2)", "(2,1)", False),
    ("(3, -1, 2)", "(3,-1,2)", True),
    # expressions
    ("2^n/(n+1)", "\\frac{2^n}{n+1}", True),
    ("(a^3+2b)/(3a)", "\\frac{a^3+2b}{3a}", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("x^2+1", "(x+1)^2", False),
    ("\\pi/2", "\\frac{\\pi}{2}", True),
    ("2\\pi", "6.283185307", True),
    ("1", "\\sin^2 x + \\cos^2 x", True),
    ("3x+2y", "2y+3x", True),
    _xfail("-1", "e^{i\\pi}", True, "math-verify does not evaluate Euler's identity; e^{i*pi} stays symbolic"),
    # equations and assignments
    ("x=2, y=1", "x=2,y=1", True),
    ("x=2, y=1", "y=1, x=2", True),
    ("x=2, y=1", "x=1, y=2", False),
    ("y=2x+1", "y = 1 + 2x", True),
    ("5", "x=5", True),
    # units
    ("10", "10\\text{ cm}", True),
    ("10", "10 \\mathrm{cm}", True),
    ("10\\text{ cm}", "10", True),
    ("90^\\circ", "90", True),
    ("90", "90^{\\circ}", True),
    ("\\$5", "5", True),
    ("5", "5 \\text{ dollars}", True),
    # text answers (multiple-choice letters, yes/no, words)
    ("\\text{Yes}", "\\text{Yes}", True),
    ("Yes", "\\text{yes}", True),
    ("\\text{Yes}", "\\text{No}", False),
    ("\\text{(A)}", "A", True),
    ("B", "\\text{(C)}", False),
    ("\\text{even}", "\\text{odd}", False),
    ("There are no primes in the sequence", "There are no primes in the sequence", True),  # same text: equal
    # malformed LaTeX in the prediction never counts as correct
    ("1/2", "\\frac{1}{2", False),
    ("3", "\\frac{}{}", False),
    ("3", "", False),
    ("3", "}{", False),
    ("3/4", "3/4)", False),
]


@pytest.mark.parametrize(("gold", "pred", "expected"), TABLE)
def test_math_table(gold: str, pred: str, expected: bool):
    response = "Some reasoning first. The answer is $\\boxed{" + pred + "}$."
    assert verify_math(response, gold) is expected


def test_table_is_large_and_balanced():
    assert len(TABLE) >= 60
    expectations = [row[2] if isinstance(row, tuple) else row.values[2] for row in TABLE]
    assert 15 <= expectations.count(False) <= len(TABLE) - 15


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{5}", "5"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed{ 7 }", "7"),
        ("\\fbox{8}", "8"),
        ("$\\boxed 9$", "9"),
        ("no box here", None),
        ("\\boxed{1} and a truncated \\boxed{\\frac{1}{2", None),
        ("\\boxed", None),
    ],
)
def test_extract_boxed(text: str, expected: str | None):
    assert extract_boxed(text) == expected


def test_unboxed_answer_is_wrong_even_if_stated():
    assert verify_math("The final answer is 42.", "42") is False
    assert verify_math("\\boxed{}", "42") is False


def test_rewards_from_correct_modes():
    correct = torch.tensor([True, False, True])  # (N,)
    assert torch.equal(rewards_from_correct(correct), torch.tensor([1.0, -1.0, 1.0]))
    assert torch.equal(rewards_from_correct([True, False], mode="01"), torch.tensor([1.0, 0.0]))
    with pytest.raises(KeyError, match="pm1"):
        rewards_from_correct(correct, mode="binary")
