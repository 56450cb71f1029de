"""``steer ablate``: arms x seeds of the training flow, one parent MLflow run with a child per run, then the
comparison report (PNGs, summary table) in MLflow, as Prefect artifacts and printed here."""

from __future__ import annotations

import argparse


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="base preset name (steer/presets/*.yaml) or a .yaml path")
    p.add_argument(
        "--arms",
        help="comma-separated arms: grpo, clip_higher, entropy_bonus, clip_cov, kl_cov, "
        "steer_0.6, steer_0.7, steer_0.8 (default: all of them), or any algorithm preset",
    )
    p.add_argument(
        "--lambda-min-sweep",
        action="store_true",
        help="the lambda_min arms instead: clip_higher, steer_0.6, steer_0.7, steer_0.8",
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds (default 0,1,2)")
    p.add_argument("--steps", type=int, help="RL steps per run (default: the preset's)")
    p.add_argument("--output-dir", default="runs/ablation", help="root folder; {date} and {time} are filled in")
    p.add_argument("--experiment", default="steer-ablation", help="MLflow experiment")
    p.add_argument("--concurrency", type=int, default=1, help="runs trained at once (default 1)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a run setting for every arm, e.g. --set optim.lr=1e-4",
    )


def build_config(args: argparse.Namespace):
    from steer.ablation import DEFAULT_ARMS, LAMBDA_MIN_ARMS, AblationConfig, select_arms
    from steer.config import ConfigError, parse_overrides

    arms = select_arms(_list(args.arms)) if args.arms else LAMBDA_MIN_ARMS if args.lambda_min_sweep else DEFAULT_ARMS
    try:
        seeds = [int(s) for s in _list(args.seeds)]
    except ValueError:
        raise ConfigError(f"--seeds {args.seeds!r}: give integers separated by commas, e.g. 0,1,2") from None
    return AblationConfig(
        preset=args.preset,
        arms=arms,
        seeds=seeds,
        steps=args.steps,
        overrides=parse_overrides(args.overrides),
        output_root=args.output_dir,
        experiment=args.experiment,
        concurrency=args.concurrency,
    )


def run(args: argparse.Namespace) -> int:
    return execute(lambda: build_config(args), "steer ablate")


def execute(make_config, prog: str) -> int:
    """Build the ``AblationConfig`` (``make_config()``), check every run's settings before Prefect starts, run the
    ablation flow and print its summary; a bad setting prints ``<prog>: <what and how to fix it>`` and returns 2."""
    import sys

    from pydantic import ValidationError

    from steer.config import ConfigError

    try:
        config = make_config()
        config.jobs()  # every run's settings, checked before Prefect starts
    except (ConfigError, ValidationError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    from flows.ablate import ablate
    from steer_cli.commands.comparison import print_table
    from steer_cli.commands.printing import announce_prefect

    announce_prefect(prog)
    result = ablate(config)
    print_table(result["table"])
    print(f"parent MLflow run: {result['parent_run_id']}  ({result['tracking_uri']})")
    print(
        f"report: {result['report_dir']}  (re-render: steer report {result['parent_run_id']} "
        f"--tracking-uri {result['tracking_uri']})"
    )
    for name, why in result["skipped"].items():
        print(f"plot {name} skipped: {why}")
    return 0
