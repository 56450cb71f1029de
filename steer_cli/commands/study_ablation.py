"""``steer study collapse`` and ``steer study sensitivity``: issue 6's studies 2 and 3, which are ablations
(``steer.ablation.STUDIES``) run by the ablation flow, so they are schedulable like any other ablation
(deployments/prefect.yaml) and their report lands in MLflow. docs/results.md holds what they measured.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from steer_cli.commands.ablate import _list


def arguments(name: str) -> Callable[[argparse.ArgumentParser], None]:
    """The flags of study ``name``. Nothing is imported here (``steer --help`` builds every parser): the study's own
    defaults (arms, seeds, preset, folder) are filled in by ``build_config``."""

    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("--arms", help="comma-separated subset of the study's arms (default: all of them)")
        p.add_argument("--seeds", help="comma-separated run seeds (default: the study's, 0,1,2)")
        p.add_argument("--steps", type=int, help="RL steps per run (default: the study preset's)")
        p.add_argument("--output-dir", help=f"root folder (default runs/study-{name}); rerunning a folder resumes it")
        p.add_argument("--concurrency", type=int, default=1, help="runs trained at once (default 1)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a run setting for every arm, e.g. --set optim.lr=2e-4",
        )

    return add


def build_config(name: str, args: argparse.Namespace):
    """The study's ``AblationConfig`` with the flags applied; raises ``ConfigError`` naming the flag at fault."""
    from steer.ablation import STUDIES
    from steer.config import ConfigError, parse_overrides

    study = STUDIES[name]
    arms = list(study.arms)
    if args.arms:
        by_name = {a.name: a for a in study.arms}
        unknown = [a for a in _list(args.arms) if a not in by_name]
        if unknown:
            raise ConfigError(f"--arms {','.join(unknown)}: not an arm of this study; choose from {','.join(by_name)}")
        arms = [by_name[a] for a in _list(args.arms)]
    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in _list(args.seeds)]
        except ValueError:
            raise ConfigError(f"--seeds {args.seeds!r}: give integers separated by commas, e.g. 0,1,2") from None
    return study.config(
        arms=arms,
        seeds=seeds,
        steps=args.steps,
        overrides=parse_overrides(args.overrides),
        output_root=args.output_dir,
        concurrency=args.concurrency,
    )


def runner(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from steer_cli.commands.ablate import execute

        return execute(lambda: build_config(name, args), f"steer study {name}")

    return run
