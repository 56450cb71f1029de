"""Step tasks take their arguments by reference (tasks/by_reference.py): the function receives the objects it was
called with, unvisited, in a call, a submit, a retry and through ``with_options``."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from prefect import flow, task

from tasks.by_reference import ByReferenceTask, by_reference
from tasks.persist import log_metrics, write_rollouts
from tasks.rl import generate_rollouts, score_rollouts, sync_weights, update_policy

pytestmark = pytest.mark.flow


@dataclass
class Rollout:
    ids: torch.Tensor
    rows: list


class Walked(list):
    """A list that counts how often something iterates it (Prefect's walk over a task's arguments does)."""

    walks = 0

    def __iter__(self):
        Walked.walks += 1
        return super().__iter__()


def test_the_step_tasks_pass_their_arguments_by_reference():
    for t in (generate_rollouts, score_rollouts, update_policy, sync_weights, write_rollouts, log_metrics):
        assert isinstance(t, ByReferenceTask), t.name


def test_a_by_reference_task_gets_its_arguments_unwalked_in_a_call_submit_retry_and_with_options(prefect_harness):
    attempts = {"n": 0}

    @by_reference(name="flaky-identity", retries=1, retry_delay_seconds=0)
    def flaky(x, *, y):
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise RuntimeError("transient")
        return id(x), id(y), id(x["rollout"])  # ids: a returned object is walked too

    plain = task(name="plain-identity")(lambda x, *, y: (id(x), id(y), id(x["rollout"])))
    quoted = by_reference(name="identity")(lambda x, *, y: (id(x), id(y), id(x["rollout"])))

    @flow(persist_result=False)
    def run():
        obj = {"rollout": Rollout(torch.zeros(4, 3), [[1, 2], [3]]), "names": Walked(["a", "b"])}
        kw = [obj["rollout"]]
        plain(obj, y=kw)
        walked_by_plain, Walked.walks = Walked.walks, 0
        calls = {
            "call": lambda: quoted(obj, y=kw),
            "submit": lambda: quoted.submit(obj, y=kw).result(),
            "retry": lambda: flaky(obj, y=kw),
            "options": lambda: quoted.with_options(name="renamed")(obj, y=kw),
        }
        out, walks = {}, {}
        for how, call in calls.items():
            Walked.walks = 0
            out[how] = call()
            walks[how] = Walked.walks
        want = (id(obj), id(kw), id(obj["rollout"]))
        return {how: ids == want for how, ids in out.items()}, walked_by_plain, walks

    same, walked_by_plain, walks = run()  # (a flow's return value is walked too: only counts come back)
    # Prefect walks into a plain task's arguments (5 iterations of the list here); a by-reference call touches the
    # top level once per attempt at most
    assert all(w < walked_by_plain for w in walks.values()), (walked_by_plain, walks)
    assert same == {"call": True, "submit": True, "retry": True, "options": True}
    assert attempts["n"] == 2
