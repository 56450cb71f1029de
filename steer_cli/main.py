"""The ``steer`` command line: one sub-command per module in ``steer_cli.commands``.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int``. Heavy imports (torch, prefect,
mlflow) happen inside ``run`` so that ``steer --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

_PKG = "steer_cli.commands"
# sub-command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": (f"{_PKG}.train", "train a policy with STEER or a baseline (Prefect flow, MLflow tracking)"),
    "eval": (f"{_PKG}.eval", "evaluate a model on benchmarks"),
    "score": (f"{_PKG}.score", "score given completions against a benchmark, no model needed"),
    "ablate": (f"{_PKG}.ablate", "train arms x seeds, one parent MLflow run, and compare them (plots, table)"),
    "report": (f"{_PKG}.comparison", "re-render an ablation's report from MLflow by its parent run id"),
    "study": (f"{_PKG}.study", "the studies of docs/results.md: steer study estimator | collapse | sensitivity"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


# Quiet, offline-friendly defaults for every command (an explicit environment variable wins): the console shows
# progress bars and tables; task logs stay in the Prefect API/UI; no telemetry leaves the machine.
ENV_DEFAULTS = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # the embedded server takes 10-30 s on 2 cores
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # MLflow's INFO lines (creating tables, system-metrics threads) are noise here
}


_terminated: list[int] = []  # the signal received, once SIGTERM came


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (``kill PID``, a scheduler's stop) as an exit, not a sudden death: the flow run and the MLflow run are
    closed as crashed / KILLED (Prefect turns SIGTERM into its ``TerminationSignal`` inside a flow, then re-sends it
    here), the verifier's workers are stopped and atexit stops an ephemeral Prefect API server."""
    _terminated.append(signum)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    own = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # not when embedded in a process that set its own
    if own:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except BaseException:
        if _terminated:  # whatever the unwinding raised after SIGTERM (a task's cleanup, a worker thread's error),
            return 128 + _terminated[0]  # the process ends as terminated, as `kill PID` and schedulers expect
        raise
    finally:
        if own:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
