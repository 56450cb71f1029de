"""What one Prefect task run costs inside a flow, with a step-sized nested argument passed plainly and quoted.

A no-op task (``retries=2``, ``NO_CACHE``, as the step tasks in ``tasks/rl.py``) is called ``--calls`` times with a
dict holding a dataclass of tensors and lists, about what a step task receives. Prefect walks a plain argument
(``visit_collection``) to find futures and record inputs; ``prefect.utilities.annotations.quote`` passes it through
unwalked. Prints wall and CPU milliseconds per call for each, twice (the first round includes warm-up).

    PYTHONPATH=. .venv/bin/python bench/bench_task_overhead.py [--calls 40]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import torch  # noqa: E402
from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.utilities.annotations import quote  # noqa: E402


@dataclasses.dataclass
class Rollout:
    ids: torch.Tensor
    rows: list


@task(retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def noop(x):
    return None


@flow(persist_result=False)
def measure(calls: int) -> list[tuple[str, float, float]]:
    arg = {
        "rollout": Rollout(torch.zeros(64, 32), [torch.zeros(3) for _ in range(64)]),
        "prompts": [list(range(40)) for _ in range(64)],
    }
    out = []
    for mode in ("plain", "quoted", "plain", "quoted"):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            noop(quote(arg) if mode == "quoted" else arg)
        out.append((mode, (time.perf_counter() - wall) / calls * 1e3, (time.process_time() - cpu) / calls * 1e3))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=40, help="task calls per measurement")
    args = p.parse_args()
    for mode, wall, cpu in measure(args.calls):
        print(f"{mode:7s} {wall:6.1f} ms wall  {cpu:6.1f} ms CPU per task call")


if __name__ == "__main__":
    main()
