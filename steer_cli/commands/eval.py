"""``steer eval``: evaluate a model on benchmarks (Prefect flow ``flows/evaluate.py``) and print the table."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", help="local folder, runs:/RUN_ID/PATH (MLflow), 'tiny', or a hub id")
    p.add_argument("--benchmark", required=True, help="comma-separated names, e.g. reasoning_gym_heldout,champ")
    p.add_argument("--k", type=int, help="samples per problem (default: the benchmark's, e.g. 32 for AIME)")
    p.add_argument("--limit", type=int, help="first N problems of each benchmark")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--temperature", type=float, help="default: the benchmark's (1.0)")
    p.add_argument("--top-p", type=float, help="default: the benchmark's (0.7)")
    p.add_argument("--template", help="prompt template over {problem}; default: the benchmark's")
    p.add_argument(
        "--data-path",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="local .jsonl/.parquet copy of a hub benchmark",
    )
    p.add_argument("--output-dir", default="runs/eval")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    import sys

    from rich.console import Console
    from rich.table import Table

    from flows.evaluate import evaluate
    from steer.benchmarks import BenchmarkUnavailable
    from steer.checkpoint import CheckpointDamaged
    from steer_cli.commands.printing import announce_prefect

    data_paths = dict(item.split("=", 1) for item in args.data_path)
    announce_prefect("steer eval")
    try:
        results = evaluate(
            model=args.model,
            benchmarks=args.benchmark.split(","),
            k=args.k,
            limit=args.limit,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            template=args.template,
            data_paths=data_paths,
            output_dir=args.output_dir,
            seed=args.seed,
        )
    except (BenchmarkUnavailable, KeyError, FileNotFoundError, CheckpointDamaged) as e:  # recorded in MLflow too
        print(f"steer eval: {e}", file=sys.stderr)
        return 2
    table = Table(title=f"steer eval: {args.model}")
    for col in ("benchmark", "metric", "value"):
        table.add_column(col)
    for bench, metrics in results.items():
        for k, v in metrics.items():
            table.add_row(bench, k.split("/", 2)[-1], f"{v:.4f}")
    Console().print(table)
    print(f"generations and results: {args.output_dir}")
    return 0
