"""Evaluation metrics over k sampled responses per problem: avg@k, unbiased pass@k, maj@k.

Per problem the inputs are its n samples' correctness (and, for maj@k, their extracted answers); a benchmark's value
is the mean over problems. Names follow the project's metric rules (no ``@``): ``eval/<benchmark>/avg_at_32``.

- avg@k: mean correctness of k samples -- the paper's AIME/AMC metric (avg@32), an estimate of pass@1 with lower
  variance than one sample.
- pass@k: probability that at least one of k samples drawn without replacement from the n is correct, estimated
  without bias from n >= k samples with c correct (Chen et al. 2021, "Evaluating Large Language Models Trained on
  Code", eq. 1): 1 - C(n-c, k) / C(n, k), computed as the numerically stable product 1 - prod_{i=n-c+1}^{n} (1 - k/i).
- maj@k (self-consistency, Wang et al. 2023): the answer given most often among the first k samples is the
  problem's answer; it scores the correctness of that answer.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al. 2021); needs 0 <= c <= n, k <= n."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def avg_at_k(correct: Sequence[bool], k: int | None = None) -> float:
    """Mean correctness of the first ``k`` samples (all when None) of one problem."""
    samples = list(correct)[: k or len(correct)]
    if not samples or (k is not None and len(samples) < k):
        raise ValueError(f"avg@{k} needs at least {k or 1} samples, got {len(correct)}")
    return sum(map(bool, samples)) / len(samples)


_SPACES = re.compile(r"\s+|\\[,;:! ]")
_SIZING = re.compile(r"\\(left|right|big|Big|bigg|Bigg)\b")


def normalize_answer(answer: str) -> str:
    """The voting key of an extracted answer: no whitespace or LaTeX spacing/sizing, ``\\dfrac``/``\\tfrac`` ->
    ``\\frac``, no trailing period. Answers that differ only in form (``0.5`` vs ``\\frac12``) stay distinct votes."""
    key = _SIZING.sub("", _SPACES.sub("", answer))
    key = key.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return key.rstrip(".")


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int | None = None) -> float:
    """1.0 if the majority answer among the first ``k`` samples (all when None) is correct, else 0.0.

    ``answers[i]`` is sample i's extracted answer (None when it gave none: it does not vote) and ``correct[i]`` its
    correctness. Votes are counted on ``normalize_answer`` keys. Ties go to the tied answer whose first vote came
    earliest (sample order): deterministic, and for exchangeable samples a uniformly random pick among the tied.
    The majority answer's correctness is that of its first sample. No votes at all scores 0.
    """
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} correctness flags")
    n = k or len(answers)
    if len(answers) < n:
        raise ValueError(f"maj@{k} needs at least {k} samples, got {len(answers)}")
    keys = [normalize_answer(a) if a is not None else None for a in answers[:n]]
    votes = Counter(key for key in keys if key is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    winner = next(key for key in keys if key is not None and votes[key] == top)  # earliest of the tied
    return float(bool(correct[keys.index(winner)]))


def benchmark_metrics(
    correct: Sequence[Sequence[bool]],
    answers: Sequence[Sequence[str | None]] | None = None,
    pass_ks: Sequence[int] = (),
    prefix: str = "eval",
) -> dict[str, float]:
    """Means over problems: ``{prefix}/avg_at_{n}``, ``{prefix}/pass_at_{k}`` per k, and ``{prefix}/maj_at_{n}`` when
    ``answers`` is given. ``correct`` is (P, n): n samples for each of P problems (the same n for all)."""
    if not correct:
        raise ValueError("no problems to score")
    n = len(correct[0])
    if n == 0 or any(len(c) != n for c in correct):
        raise ValueError("every problem needs the same, non-zero number of samples")
    p = len(correct)
    out = {f"{prefix}/avg_at_{n}": sum(avg_at_k(c) for c in correct) / p}
    for k in pass_ks:
        out[f"{prefix}/pass_at_{k}"] = sum(pass_at_k(n, sum(map(bool, c)), k) for c in correct) / p
    if answers is not None:
        out[f"{prefix}/maj_at_{n}"] = sum(maj_at_k(a, c) for a, c in zip(answers, correct)) / p
    out[f"{prefix}/num_problems"] = float(p)
    return out
