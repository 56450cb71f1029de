"""``steer study <name>``: measurements of the method beside training, one sub-command per study.

- ``estimator``: how well each entropy-change estimator predicts the change of one real optimizer step, at the
  start, middle and end of a run (flows/estimator_study.py).
- ``collapse``, ``sensitivity``: ablations (``steer.ablation.STUDIES``) run by the ablation flow
  (steer_cli/commands/study_ablation.py).

Each study is a sub-command in ``STUDY_COMMANDS``: name -> (add_arguments, run, one-line help); the studies
themselves are ``steer.ablation.STUDIES`` (the ablations) and the estimator flow.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from steer_cli.commands import study_ablation


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


# ------------------------------------------------------------------------------------------------------ estimator
def estimator_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="preset of the source run (steer/presets/*.yaml) or a .yaml path")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a source-run setting, e.g. --set steps=20 --set optim.lr=1e-4",
    )
    p.add_argument(
        "--output-dir",
        default="runs/estimator-study",
        help="study folder; the source run trains in <output-dir>/run and is reused on a rerun",
    )
    p.add_argument(
        "--source-dir",
        help="folder of the source run (default <output-dir>/run); a finished run there, "
        "e.g. another study's, is measured without training again",
    )
    p.add_argument(
        "--stages",
        default="start,middle,end",
        help="comma-separated: start, middle, end, checkpoint steps (default start,middle,end)",
    )
    p.add_argument(
        "--optimizers",
        help="comma-separated name:lr cells, e.g. sgd:1e-3,adamw:1e-4 (default: SGD "
        "1e-3/1e-2/1e-1 and AdamW 1e-6/1e-4/1e-3)",
    )
    p.add_argument("--prompts", type=int, help="prompts in the study batch (default: the preset's prompts_per_step)")
    p.add_argument(
        "--batches",
        type=int,
        default=3,
        help="independent rollout batches per stage; the summary "
        "gives the mean and a 95%% t-interval over them (default 3)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the study's prompts and rollouts (default 0)")
    p.add_argument("--experiment", default="steer-estimator-study", help="MLflow experiment of the study run")


def estimator_config(args: argparse.Namespace):
    """The ``EstimatorStudyConfig`` of the flags; raises ``ConfigError`` or pydantic's ``ValidationError``."""
    from steer.config import ConfigError, parse_overrides
    from steer.studies.config import EstimatorStudyConfig

    cells = []
    for item in _list(args.optimizers or ""):
        name, _, lr = item.partition(":")
        try:
            cells.append({"name": name.strip(), "lr": float(lr)})
        except ValueError:
            raise ConfigError(
                f"--optimizers {item!r}: write name:lr pairs separated by commas, e.g. sgd:1e-3,adamw:1e-4"
            ) from None
    fields = dict(
        preset=args.preset,
        overrides=parse_overrides(args.overrides),
        output_dir=args.output_dir,
        source_dir=args.source_dir,
        stages=_list(args.stages),
        prompts=args.prompts,
        batches=args.batches,
        seed=args.seed,
        experiment=args.experiment,
    )
    if cells:
        fields["optimizers"] = cells
    return EstimatorStudyConfig(**fields)


def estimator_run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from steer.config import ConfigError, explain

    try:
        config = estimator_config(args)
        config.check()  # the source run's settings, checked before Prefect starts
    except ValidationError as e:
        print(f"steer study estimator: {explain(e)}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"steer study estimator: {e}", file=sys.stderr)
        return 2
    from flows.estimator_study import estimator_study
    from steer_cli.commands.printing import announce_prefect

    announce_prefect("steer study estimator")
    result = estimator_study(config)
    print_all_rows(result["summary"])
    print(
        f"tokens: {result['tokens']}  table: {result['table_md']}  summary: {result['summary_md']}  "
        f"cells: {result['cells_csv']}"
    )
    print(f"scatter plots: {', '.join(result['scatter'])}")
    print(f"MLflow run: {result['mlflow_run_id']}  ({result['tracking_uri']})")
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in result["timing"].items()))
    return 0


def print_all_rows(rows: list[dict]) -> None:
    """The ``all`` rows of the estimator summary (valid tokens with A != 0), one line per stage, cell and estimator:
    mean ± the 95% t-interval's half-width over the rollout batches."""
    from rich.console import Console
    from rich.table import Table

    from steer.studies.estimator import SUMMARY_STATS, mean_ci

    batches = max((r["batches"] for r in rows), default=0)
    table = Table(
        title=f"estimator vs realized entropy change (tokens with A != 0; mean ± 95% CI over {batches} rollout batches)"
    )
    for col in ("stage", "step", "optimizer", "lr", "estimator", "n", "pearson", "spearman", "mse / mse_zero"):
        table.add_column(col, justify="left" if col in ("stage", "optimizer", "estimator") else "right", no_wrap=True)
    for r in rows:
        if r["subset"] != "all":
            continue
        table.add_row(
            str(r["stage"]),
            str(r["checkpoint_step"]),
            r["optimizer"],
            f"{r['lr']:g}",
            r["estimator"],
            f"{r['n']:.0f}",
            *(mean_ci(r[s], r[f"{s}_ci"]) for s in SUMMARY_STATS),
        )
    console = Console()
    Console(width=max(console.width, 120)).print(table)  # never squeeze the names (pipes and logs get 80 columns)


StudyCommand = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]
STUDY_COMMANDS: dict[str, StudyCommand] = {
    "estimator": (
        estimator_arguments,
        estimator_run,
        "how well each entropy-change estimator predicts one real optimizer step (the paper's Table 1)",
    ),
    "collapse": (
        study_ablation.arguments("collapse"),
        study_ablation.runner("collapse"),
        "does STEER prevent entropy collapse at equal or better accuracy? (an ablation, 3 seeds)",
    ),
    "sensitivity": (
        study_ablation.arguments("sensitivity"),
        study_ablation.runner("sensitivity"),
        "STEER's lambda_min (0.5-1.0) and normaliser scope (micro, mini, rollout, running)",
    ),
    "baselines": (
        study_ablation.arguments("baselines"),
        study_ablation.runner("baselines"),
        "issue 15's 11 arms (GRPO, clip-higher, STEER paper/released/robust, Clip-Cov 7B, KL-Cov, entropy bonus, "
        "adaptive entropy, STARE, GSPO) in the collapsing setting (collapse.yaml), 3 seeds",
    ),
}
"""Study name -> (add_arguments, run, help)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="study", required=True, metavar="{" + ",".join(STUDY_COMMANDS) + "}")
    for name, (add, run_study, help_text) in STUDY_COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_study_run=run_study)
        add(sp)


def run(args: argparse.Namespace) -> int:
    return args._study_run(args)
