"""Math answer checking: boxed-answer extraction, math-verify comparison, rewards, and a process-pool scorer.

The rule-based reward of RLVR (DeepSeek-R1; DAPO, Yu et al. 2025, eq. 7): a response earns +1 when the answer in its
last ``\\boxed{...}`` is mathematically equivalent to the gold answer, else -1 (or 1/0 with ``mode="01"``).
Equivalence is decided by HuggingFace's math-verify (sympy-based parse + verify). A response without a boxed answer
is wrong; unlike math-verify's own ``parse`` on the whole response, no "final answer is ..." fallback is tried, so
the reward measures exactly what the prompt asks for.

math-verify bounds its own work with ``signal.alarm``, which only works on a process's main thread. ``MathScorer``
therefore scores in worker processes (where the worker's main thread runs math-verify with its alarms on), under a
watchdog that kills and replaces a worker stuck on one item beyond a hard wall-clock limit (``steer.verifiers.pool``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from steer.verifiers.pool import WatchdogPool

if TYPE_CHECKING:
    import torch

_BOXED_COMMANDS = ("\\boxed", "\\fbox")
_INTEGER = re.compile(r"-?\d{1,50}")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced; None if none closes.

    Also accepts the brace-less form ``\\boxed 5`` (one token up to whitespace or ``$``), as the MATH dataset does.
    ``\\boxed{\\frac{1}{2}}`` -> ``"\\frac{1}{2}"``; an unclosed last box (a truncated response) gives None even if an
    earlier box closed, since the response's final answer is the last one it started.
    """
    start = max(text.rfind(cmd) for cmd in _BOXED_COMMANDS)
    if start < 0:
        return None
    cmd = next(c for c in _BOXED_COMMANDS if text.startswith(c, start))
    i = start + len(cmd)
    if text.startswith(" ", i):  # "\\boxed 5": one token
        token = text[i:].split(maxsplit=1)[0].split("$")[0] if text[i:].strip() else ""
        return token or None
    if not text.startswith("{", i):
        return None
    depth, j = 0, i
    while j < len(text):
        ch = text[j]
        if ch == "\\" and text[j + 1 : j + 2] in ("{", "}"):
            j += 2  # "\\{" is a literal brace of the answer (a set), not a group
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
        j += 1
    return None


def _math_verify():
    import math_verify  # lazy: sympy + antlr take ~0.5 s to import

    return math_verify


def _parse(expr: str, timeout_s: int | None):
    mv = _math_verify()
    return mv.parse(
        "\\boxed{" + expr + "}",
        extraction_config=[mv.LatexExtractionConfig(), mv.ExprExtractionConfig()],
        parsing_timeout=timeout_s,
    )


def verify_math(response: str, answer: str, timeout_s: int | None = 5) -> bool:
    """True iff the last boxed answer of ``response`` is equivalent to the gold ``answer`` (math-verify).

    ``answer`` may be plain text ("3/4", "[-1, 1]", "x=2, y=1") or LaTeX ("\\frac{3}{4}"); it is parsed the same way as
    the boxed prediction. ``timeout_s`` is math-verify's per-parse / per-comparison alarm; it is switched off off the
    main thread (``signal.alarm`` would raise there), so call this from threads only under an outer time limit --
    ``MathScorer`` gives one. In-process and serial: the throughput baseline that ``MathScorer`` is measured against.
    Identical strings and two plain integers (``"042"`` vs ``"42"``) are decided without math-verify.
    """
    boxed = extract_boxed(response)
    if boxed is None or not boxed:
        return False
    gold = str(answer).strip()
    if boxed == gold:  # fast paths (most RL answers are integers): the same text, or two plain integers
        return True
    if _INTEGER.fullmatch(boxed) and _INTEGER.fullmatch(gold):
        return int(boxed) == int(gold)
    if threading.current_thread() is not threading.main_thread():
        timeout_s = None
    gold_parsed = _parse(gold, timeout_s)
    pred_parsed = _parse(boxed, timeout_s)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(_math_verify().verify(gold_parsed, pred_parsed, timeout_seconds=timeout_s))


def rewards_from_correct(correct: torch.Tensor | Sequence[bool], mode: str = "pm1") -> torch.Tensor:
    """Map correctness (N,) to float rewards (N,): ``"pm1"`` -> +1/-1 (DAPO, the STEER paper), ``"01"`` -> 1/0."""
    import torch  # here, not at the top: pool workers import this module and need no torch

    c = torch.as_tensor(list(correct) if not isinstance(correct, torch.Tensor) else correct).to(torch.bool)  # (N,)
    if mode == "pm1":
        return c.float() * 2.0 - 1.0
    if mode == "01":
        return c.float()
    raise KeyError(f"unknown reward mode {mode!r}; valid modes: 01, pm1")


def _score_one(item: tuple[str, str]) -> bool:
    """Worker-side scoring of one (response, answer) pair; runs on the worker's main thread, so alarms work.

    math-verify turns unparseable text into "not equivalent" itself; an exception that still escapes (MemoryError,
    RecursionError) is a fault of the verifier, not a wrong answer: it propagates, and the pool retries then counts
    the item (``MathScorer.num_errors``)."""
    response, answer = item
    return verify_math(response, answer, timeout_s=_WORKER_ALARM_S)


_WORKER_ALARM_S = 5


_WORKER_MEMORY_MB = 4096


def _warm_up() -> None:
    """Worker initializer: cap the worker's address space (a runaway sympy expansion then raises MemoryError in that
    worker instead of swapping the machine), import math-verify and build its parsers once."""
    import resource

    limit = _WORKER_MEMORY_MB << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    verify_math("\\boxed{\\frac{1}{2}}", "0.5", timeout_s=_WORKER_ALARM_S)


class MathScorer:
    """Scores (response, gold answer) pairs with ``verify_math`` in a pool of worker processes.

    ``score(responses, answers) -> list[bool]`` (N,). Each item gets at most ``timeout_s`` seconds of wall clock; a
    worker still busy after that is killed and replaced, and the item counts as wrong (``num_timeouts`` counts them).
    Inside the worker, math-verify's own 5 s alarms usually end a slow parse first. A verifier fault (a worker that
    dies, an exception inside ``verify_math``) is retried ``item_retries`` times in a fresh worker; an item that
    faults every time scores False and is counted in ``num_errors`` (the training flow logs the per-step count as
    ``reward/verifier_errors``), so a fault never passes for a wrong answer unseen. Use as a context manager, or call
    ``close()``: the workers are separate processes.

    ``num_workers=None`` uses every core the process may run on. Workers are fresh interpreters (safe when the parent
    holds threads, as torch does) that import math-verify once and run under a 4 GiB address-space limit.
    """

    def __init__(
        self, num_workers: int | None = None, timeout_s: float = 15.0, chunksize: int = 16, item_retries: int = 2
    ):
        self._pool = WatchdogPool(
            "steer.verifiers.math:_score_one",
            num_workers=num_workers,
            timeout_s=timeout_s,
            chunksize=chunksize,
            initializer="steer.verifiers.math:_warm_up",
            item_retries=item_retries,
        )

    @property
    def num_timeouts(self) -> int:
        """Items that hit the hard time limit since this scorer started."""
        return self._pool.num_timeouts

    @property
    def num_errors(self) -> int:
        """Items given up on after their retries (a crashed worker or an exception each time) since this scorer
        started; each scored False. ``last_error`` says what the last one died of."""
        return self._pool.num_errors

    @property
    def last_error(self) -> str | None:
        return self._pool.last_error

    def wait_ready(self) -> None:
        """Block until every worker has imported math-verify (~1 s), e.g. before timing or before training starts."""
        self._pool.wait_ready()

    def score(self, responses: Sequence[str], answers: Sequence[str]) -> list[bool]:
        if len(responses) != len(answers):
            raise ValueError(f"{len(responses)} responses but {len(answers)} answers")
        results = self._pool.map(list(zip(responses, map(str, answers))))
        return [r is True for r in results]  # a timed-out or given-up item comes back as None

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> MathScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
