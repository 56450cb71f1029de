"""Problems generated with reasoning-gym: a mix of tasks, each from its own seeded stream.

reasoning-gym's generators are procedural: item ``i`` of ``create_dataset(task, seed=s)`` comes from
``random.Random(s + i)``, so a problem is named by ``(task, seed, index)`` and regenerated exactly from it. Records
are ``{"id": "<task>/<seed>/<index>", "prompt", "answer", "task"}`` -- the same records (and ids) as the embedded
training task of ``steer.data.embedded``, whose held-out split the ``reasoning_gym_heldout`` benchmark is.

``DEFAULT_TASKS`` holds small configs (two to four terms of 1-2 digits) that a small model can partly solve; any task
name of reasoning-gym with its config keyword arguments works.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

DEFAULT_TASKS: dict[str, dict[str, Any]] = {
    "basic_arithmetic": dict(
        min_terms=2,
        max_terms=3,
        min_digits=1,
        max_digits=2,
        operators=["+", "-", "*"],
        allow_parentheses=False,
        allow_negation=False,
        format_style="simple",
        whitespace="single",
    ),
    "chain_sum": dict(min_terms=2, max_terms=4, min_digits=1, max_digits=2, allow_negation=False),
}


def make_reasoning_gym_problems(
    tasks: Mapping[str, Mapping[str, Any]] | Iterable[str] = DEFAULT_TASKS,
    n: int = 100,
    seed: int = 0,
    exclude: Iterable[Mapping[str, Any]] = (),
) -> list[dict[str, str]]:
    """``n`` problems drawn round-robin from ``tasks`` (name -> ``create_dataset`` kwargs, or names with
    ``DEFAULT_TASKS`` configs), task ``t``'s problems being items 0, 1, ... of its stream seeded with ``seed``.

    Problems whose prompt occurs in ``exclude`` (pass the training problems) or earlier in the result are skipped,
    drawing further into the streams, so a held-out split never repeats a training prompt.
    """
    import reasoning_gym  # lazy: it imports many task modules

    configs = dict(tasks) if isinstance(tasks, Mapping) else {t: DEFAULT_TASKS[t] for t in tasks}
    if not configs or n < 0:
        raise ValueError(f"need at least one task and n >= 0, got {list(configs)} and n={n}")
    seen = {str(p["prompt"]) for p in exclude}
    out: list[dict[str, str]] = []
    size = n + 16
    while len(out) < n:
        streams = {t: iter(reasoning_gym.create_dataset(t, seed=seed, size=size, **cfg)) for t, cfg in configs.items()}
        out, taken, index = [], set(seen), 0
        while len(out) < n and index < size:
            for task, stream in streams.items():
                item = next(stream)
                if item["question"] not in taken and len(out) < n:
                    taken.add(item["question"])
                    out.append(
                        {
                            "id": f"{task}/{seed}/{index}",
                            "prompt": item["question"],
                            "answer": str(item["answer"]),
                            "task": task,
                        }
                    )
            index += 1
        if len(out) < n and size > 1000 * n + 10_000:
            raise ValueError(f"only {len(out)} distinct problems exist for {list(configs)}; ask for fewer")
        size *= 2
    return out
