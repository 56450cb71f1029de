"""``steer train``: run the training flow on a preset with overrides, then print a summary table."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="preset name (steer/presets/*.yaml) or a path to a .yaml file")
    p.add_argument(
        "--algorithm", help="algorithm preset: grpo, clip_higher, entropy_bonus, clip_cov, kl_cov, steer, ..."
    )
    p.add_argument("--steps", type=int, help="RL steps")
    p.add_argument("--seed", type=int, help="run seed")
    p.add_argument("--output-dir", help="where the run writes; rerun with the same folder to resume")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any field with a dotted key, e.g. --set algorithm.token_weighting.lambda_min=0.8",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the update's plan (ranks, per-rank micro-batches, optimizer steps per rollout, memory per rank) "
        "from the config alone, without a GPU or a download, and exit",
    )
    p.add_argument(
        "--help-config",
        action="store_true",
        help="list the config fields of this preset and algorithm (its own components only), with help, and exit",
    )


def build_config(args: argparse.Namespace):
    from steer.config import load_config, merge, parse_overrides

    flags = {"steps": args.steps, "seed": args.seed, "output_dir": args.output_dir}
    overrides = merge(parse_overrides(args.overrides), {k: v for k, v in flags.items() if v is not None})
    return load_config(args.preset, overrides, algorithm=args.algorithm)


def run(args: argparse.Namespace) -> int:
    import sys

    from steer.config import ConfigError, config_help

    try:
        config = build_config(args)
        if args.help_config:
            print(config_help(config))
            return 0
        if args.dry_run:
            from steer.distributed.plan import update_plan

            print("\n".join(update_plan(config)))
            return 0
        from steer.resume import check_resume_dir  # (imports torch: after the config's own checks)

        check_resume_dir(config)  # a resume that would change the run is refused before anything starts
    except ConfigError as e:
        print(f"steer train: {e}", file=sys.stderr)
        return 2
    from flows.train import train
    from steer_cli.commands.printing import announce_prefect, print_summary

    announce_prefect("steer train")
    summary = train(config)
    print_summary(summary)
    return 0
