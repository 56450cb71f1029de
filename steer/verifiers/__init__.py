"""Verifiers: turn a response and a reference answer into correct / not correct.

``VERIFIERS`` maps a benchmark's verifier name to a scorer class with one interface:
``Scorer(num_workers=None, ...)`` used as a context manager, ``.score(responses, answers) -> list[bool]`` (N,), and
``.num_errors``: the items, since the scorer started, that a verifier fault (after its retries) left scored False.

- ``"math"``: ``MathScorer`` -- last ``\\boxed{}`` answer vs the gold answer with math-verify, in a process pool with
  a hard per-item time limit (``steer.verifiers.math``);
- ``"code"``: ``CodeScorer`` -- the program against the problem's tests in a sandbox (``steer.verifiers.code``,
  ``steer.verifiers.sandbox``).

Rewards from correctness: ``rewards_from_correct(correct, mode="pm1" | "01")``.
"""

from __future__ import annotations

from steer.registry import Registry
from steer.verifiers.code import CodeScorer, verify_code
from steer.verifiers.math import MathScorer, extract_boxed, rewards_from_correct, verify_math

VERIFIERS: Registry[type] = Registry("verifier")
VERIFIERS.register("math")(MathScorer)
VERIFIERS.register("code")(CodeScorer)

__all__ = [
    "VERIFIERS",
    "CodeScorer",
    "MathScorer",
    "extract_boxed",
    "rewards_from_correct",
    "verify_code",
    "verify_math",
]
