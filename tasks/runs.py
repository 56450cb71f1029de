"""The Prefect flow run that owns an output folder, and the stale ones a kill left RUNNING.

A SIGKILLed process cannot report its end, so its flow run stays RUNNING in the Prefect API forever. Each training
flow run records its id in ``<output_dir>/prefect_flow_run_id``; the next run in that folder (the resume) marks the
recorded one CRASHED when it is still RUNNING or PENDING, with a message naming the run that took over.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.runtime import flow_run
from prefect.states import Crashed

FLOW_RUN_ID_FILE = "prefect_flow_run_id"
log = logging.getLogger(__name__)


def claim_output_dir(output_dir: str | Path) -> str | None:
    """Mark the folder's previous flow run CRASHED if it never ended, and record the current one; returns the id
    of the run marked, or None."""
    marker = Path(output_dir) / FLOW_RUN_ID_FILE
    current = str(flow_run.id or "")
    previous = marker.read_text().strip() if marker.is_file() else ""
    marked = None
    if previous and previous != current:
        with get_client(sync_client=True) as client:
            try:
                state = client.read_flow_run(previous).state
            except Exception:  # another API (the run was elsewhere) or a deleted run: nothing to mark
                state = None
            if state is not None and state.type.value in ("RUNNING", "PENDING"):
                message = f"the process ended without reporting (killed); resumed by flow run {current}"
                client.set_flow_run_state(previous, Crashed(message=message), force=True)
                log.warning(f"flow run {previous} of {output_dir} was left {state.type.value}: marked CRASHED")
                marked = previous
    if current:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(current + "\n")
        tmp.replace(marker)
    return marked
