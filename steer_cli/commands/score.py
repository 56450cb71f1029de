"""``steer score``: score given completions against a benchmark, no model needed.

Input is JSONL, one sample per line, several lines per problem for several samples:

- code benchmarks take HumanEval's format, ``{"task_id": ..., "completion": ...}`` (the completion continues the
  prompt, or is a chat reply with a fenced full solution);
- math benchmarks take ``{"id": ..., "response": ...}`` (the last ``\\boxed{}`` is the answer).

Either field pair is accepted for either kind. Prints avg@n, pass@k (k <= n) and, for math, maj@n, and writes one
line per sample with its verdict next to the input: ``FILE.jsonl`` -> ``FILE.scored.jsonl``.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", required=True, help="benchmark name (steer.benchmarks.BENCHMARKS)")
    parser.add_argument("--completions", required=True, type=Path, help="JSONL of samples (see above)")
    parser.add_argument("--data-path", default=None, help="local copy of a hub benchmark (.jsonl or .parquet)")
    parser.add_argument("--pass-k", default="1,5,10,32", help="comma-separated k for pass@k (those <= n are shown)")
    parser.add_argument("--workers", type=int, default=None, help="verifier processes / sandboxes (default: cores)")
    parser.add_argument("--output", type=Path, default=None, help="per-sample results (default FILE.scored.jsonl)")
    parser.add_argument(
        "--in-sandbox-fallback",
        action="store_true",
        help="judge a HumanEval-style check that cannot be rewritten into (input, expected) pairs inside the "
        "candidate's own process (gameable; logged, and marked fallback=true per sample); default: refuse it",
    )


def _read_samples(path: Path) -> list[dict]:
    samples = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            pid = row.get("task_id", row.get("id"))
            text = row.get("completion", row.get("response"))
            if pid is None or text is None:
                raise ValueError(f"{path}:{lineno}: need task_id+completion or id+response, got {sorted(row)}")
            samples.append({**row, "_id": str(pid), "_text": str(text)})
    return samples


def _verdicts(spec, samples: list[dict], answers: list, workers: int | None, fallback: bool) -> list[dict]:
    """Per sample: {"passed": bool, plus "extracted" (math) or "status" and "fallback" (code)}."""
    texts = [s["_text"] for s in samples]
    if spec.verifier == "math":
        from steer.verifiers.math import MathScorer, extract_boxed

        with MathScorer(num_workers=workers) as scorer:
            correct = scorer.score(texts, answers)
        return [{"passed": c, "extracted": extract_boxed(t)} for c, t in zip(correct, texts)]
    from steer.verifiers.code import run_code_tests
    from steer.verifiers.pool import available_cpus

    judge = functools.partial(run_code_tests, in_sandbox_fallback=fallback)
    with ThreadPoolExecutor(max_workers=workers or 2 * available_cpus()) as ex:
        results = list(ex.map(judge, texts, answers))
    return [{"passed": r.passed, "status": r.status, "fallback": r.fallback} for r in results]


def run(args: argparse.Namespace) -> int:
    from steer.benchmarks import BENCHMARKS, load_benchmark
    from steer.metrics import benchmark_metrics

    spec = BENCHMARKS.get(args.benchmark)
    problems = {p["id"]: p for p in load_benchmark(args.benchmark, data_path=args.data_path)}
    samples = _read_samples(args.completions)
    unknown = sorted({s["_id"] for s in samples} - problems.keys())
    if unknown:
        print(f"steer score: {len(unknown)} ids are not in {args.benchmark}, e.g. {unknown[:3]}", file=sys.stderr)
        return 2
    from steer.verifiers.humaneval_check import UnsupportedCheck

    try:
        verdicts = _verdicts(
            spec, samples, [problems[s["_id"]]["answer"] for s in samples], args.workers, args.in_sandbox_fallback
        )
    except UnsupportedCheck as e:
        print(f"steer score: {e}", file=sys.stderr)
        return 2

    by_problem: dict[str, list[dict]] = defaultdict(list)
    for s, v in zip(samples, verdicts):
        by_problem[s["_id"]].append(v)
    counts = {len(v) for v in by_problem.values()}
    if len(counts) != 1:
        print(
            f"steer score: problems have different sample counts {sorted(counts)}; give each the same", file=sys.stderr
        )
        return 2
    n = counts.pop()
    correct = [[v["passed"] for v in vs] for vs in by_problem.values()]
    answers = [[v["extracted"] for v in vs] for vs in by_problem.values()] if spec.verifier == "math" else None
    pass_ks = [k for k in (int(x) for x in args.pass_k.split(",") if x.strip()) if k <= n]
    metrics = benchmark_metrics(correct, answers, pass_ks=pass_ks, prefix=f"eval/{args.benchmark}")

    output = args.output or args.completions.with_name(args.completions.name.removesuffix(".jsonl") + ".scored.jsonl")
    with output.open("w", encoding="utf-8") as f:
        for s, v in zip(samples, verdicts):
            row = {k: val for k, val in s.items() if not k.startswith("_")}
            f.write(json.dumps({**row, **v}) + "\n")

    missing = len(problems) - len(by_problem)
    print(f"{args.benchmark}: {len(by_problem)} problems x {n} samples ({spec.verifier} verifier)")
    if missing:
        print(f"  ({missing} problems of the benchmark have no samples and are left out)")
    for name, value in metrics.items():
        print(f"  {name.rsplit('/', 1)[-1]:<14} {value:10.4f}")
    print(f"per-sample results: {output}")
    return 0
