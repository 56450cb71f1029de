"""One training at a time per device kind: a Prefect global concurrency limit ``steer-train-<cpu|cuda>``.

``scripts/service.sh start`` creates the limits (``prefect gcl create steer-train-cpu --limit 1``; more slots for
more devices). The training flow holds a slot while it trains, so the nightly ablation and a manual run queue one
after the other instead of sharing two cores; where the server has no such limit (the ephemeral server of a plain
``steer train``), the flow trains at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound

from tasks.progress import progress_logger


def slot_name(device_kind: str) -> str:
    """``steer-train-cpu``, ``steer-train-cuda``: the limit a training on that kind of device holds."""
    return f"steer-train-{device_kind}"


def _limit_exists(name: str) -> bool:
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return False
    return True


@contextmanager
def training_slot(device_kind: str) -> Iterator[str | None]:
    """Hold one slot of ``steer-train-<device_kind>`` for the duration (waiting for it if another training holds
    it); yields the limit's name, or None when the server has no such limit."""
    name = slot_name(device_kind)
    if not _limit_exists(name):
        yield None
        return
    log = progress_logger()
    log.info("waiting for a training slot of %s (another training may hold it) ...", name)
    with concurrency(name, occupy=1, strict=True):
        log.info("holding a training slot of %s", name)
        yield name
