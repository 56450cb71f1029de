"""The embedded default task: integer arithmetic problems from the ``reasoning-gym`` package, no network needed.

reasoning-gym's generators are procedural and seeded: item ``i`` of a dataset built with ``seed=s`` comes from
``random.Random(s + i)``. Two seeds therefore give disjoint problem *streams* only when their index ranges do not
overlap, so the held-out split starts at ``heldout_seed`` (default 10**9, far from any training range) and, besides,
drops every problem whose prompt also occurs among the training problems it is given (small problems recur by
chance: there are 242 two-term and 5,324 three-term problems with operands 0..10). The held-out split is therefore
mostly three-term problems the warm-start never saw: its accuracy measures generalisation, not recall.

Records are ``{"id": str, "prompt": str, "answer": str, "task": str}``: ``prompt`` is the raw reasoning-gym question
(e.g. ``"Calculate 37 - 8."``), ``answer`` the integer as a string. Formatting (chat template, instructions) is the
caller's concern.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

Problem = dict[str, str]
"""A problem record: ``{"id", "prompt", "answer", "task"}``."""


@dataclass(frozen=True)
class ArithmeticTask:
    """reasoning-gym ``basic_arithmetic`` restricted to what a few-million-parameter model can partly learn on a CPU.

    The default (two or three operands in 0..10, + and -) is partly learnable by the tiny policy of
    ``steer.models.tiny`` in a one-minute supervised warm-start: about 35-40% of held-out problems right when
    sampling at temperature 1 (about 50% greedy), which leaves room for RL. Two-digit operands (carries) stay near
    0% after such a warm-start; two-term problems alone are memorised and leave no held-out problem.
    """

    min_terms: int = 2
    """Fewest operands per problem."""
    max_terms: int = 3
    """Most operands per problem (drawn uniformly per problem): 3-term problems are the ones left to learn."""
    min_digits: int = 1
    """Fewest digits per operand (drawn per problem; operands are drawn from 0..10**digits, so 0..10 for 1)."""
    max_digits: int = 1
    """Most digits per operand; 2 digits (carries) stay near 0% after a one-minute warm-start."""
    operators: tuple[str, ...] = ("+", "-")
    """Operators to draw from; any of + - * / (division is exact in reasoning-gym)."""
    train_seed: int = 0
    """Seed of the training stream: training problem ``i`` comes from ``Random(train_seed + i)``."""
    heldout_seed: int = 1_000_000_000
    """Seed of the held-out stream; far above ``train_seed`` so the two index ranges never overlap."""

    @property
    def name(self) -> str:
        """The reasoning-gym dataset name, stored in each record's ``task`` field."""
        return "basic_arithmetic"

    def generator_config(self) -> dict:
        """Keyword arguments for ``reasoning_gym.create_dataset`` (without seed and size)."""
        config = asdict(self)
        for key in ("train_seed", "heldout_seed"):
            config.pop(key)
        config["operators"] = list(self.operators)
        config.update(allow_parentheses=False, allow_negation=False, format_style="simple", whitespace="single")
        return config


def generate_problems(task: ArithmeticTask, n: int, seed: int) -> list[Problem]:
    """Problems ``0..n-1`` of the reasoning-gym stream seeded with ``seed``; ids are ``"<task>/<seed>/<index>"``."""
    import reasoning_gym

    dataset = reasoning_gym.create_dataset(task.name, seed=seed, size=max(n, 1), **task.generator_config())
    return [
        {"id": f"{task.name}/{seed}/{i}", "prompt": item["question"], "answer": str(item["answer"]), "task": task.name}
        for i, item in zip(range(n), dataset)
    ]


def train_problems(task: ArithmeticTask, n: int) -> list[Problem]:
    """The first ``n`` training problems (seed ``task.train_seed``)."""
    return generate_problems(task, n, task.train_seed)


def heldout_problems(task: ArithmeticTask, n: int, exclude: list[Problem] | None = None) -> list[Problem]:
    """``n`` distinct held-out problems (seed ``task.heldout_seed``) whose prompts do not occur in ``exclude`` (pass
    the training problems); built on ``steer.benchmarks.reasoning_gym.make_reasoning_gym_problems``."""
    from steer.benchmarks.reasoning_gym import make_reasoning_gym_problems

    return make_reasoning_gym_problems({task.name: task.generator_config()}, n, task.heldout_seed, exclude or [])
