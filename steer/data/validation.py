"""Bad data rows are skipped and counted when the data is prepared, never trained on silently.

A row is bad when its prompt is empty (or only whitespace), its answer is missing (``None``, empty: ``str(None)``
would become the gold answer ``"None"``), or its prompt does not fit the model's context together with the longest
response the run asks for (the sampler would run past the positions the model knows). ``BadRows`` records the row
numbers (0-based, in the source's order) per reason; ``summary`` is the message the run prints and stores.
No I/O, no tokenizer import: the caller passes the prompt length function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from steer.data.embedded import Problem

EMPTY_PROMPT = "empty prompt"
MISSING_ANSWER = "missing answer"
OVERLONG_PROMPT = "prompt longer than the model's context"

_FIXES = {
    EMPTY_PROMPT: "check data.prompt_key names the problem's column, or drop those rows",
    MISSING_ANSWER: "check data.answer_key names the gold answer's column, or drop those rows",
    OVERLONG_PROMPT: "shorten those prompts, or lower rollout.max_new_tokens / eval.max_new_tokens",
}


@dataclass
class BadRows:
    """Row numbers per reason a row was skipped."""

    rows: dict[str, list[int]] = field(default_factory=dict)

    def add(self, reason: str, row: int) -> None:
        self.rows.setdefault(reason, []).append(row)

    @property
    def count(self) -> int:
        return sum(len(r) for r in self.rows.values())

    def summary(self, source: str, total: int) -> str:
        """``"<source>: skipped 3 of 10 rows: empty prompt (2 rows: 0, 4; fix: ...)"``, first 20 rows each."""
        parts = []
        for reason, rows in self.rows.items():
            shown = ", ".join(map(str, rows[:20])) + (", ..." if len(rows) > 20 else "")
            parts.append(f"{reason} ({len(rows)} rows: {shown}; fix: {_FIXES.get(reason, 'drop those rows')})")
        return f"{source}: skipped {self.count} of {total} rows: " + "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"skipped": self.count, "rows": self.rows}


def row_problem(prompt: str, answer: Any) -> str | None:
    """The reason a (prompt, answer) pair cannot be trained on, or None when it can."""
    if not prompt.strip():
        return EMPTY_PROMPT
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return MISSING_ANSWER
    return None


def drop_overlong(
    problems: list[Problem], prompt_tokens: Callable[[str], int], context: int | None, max_new_tokens: int
) -> tuple[list[Problem], BadRows]:
    """Keep the problems whose ``prompt_tokens(prompt) + max_new_tokens <= context``; ``context=None`` keeps all.

    Row numbers in the returned ``BadRows`` index ``problems``."""
    bad = BadRows()
    if context is None:
        return problems, bad
    kept = []
    for i, p in enumerate(problems):
        if prompt_tokens(p["prompt"]) + max_new_tokens > context:
            bad.add(OVERLONG_PROMPT, i)
        else:
            kept.append(p)
    return kept, bad
