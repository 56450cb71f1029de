"""The training flow with ``trainer.backend=ray``: two FSDP2 ranks (gloo, CPU) train, the flow keeps the sampling
copy, MLflow and Parquet are as for a local run, and no Ray process outlives the run. A checkpoint written by the
ranks resumes in one process (2 -> 1), and one written in one process resumes on two ranks (1 -> 2); the next
steps equal an unbroken run's. A rank that fails ends the run with its rank named, and Ray is gone after it."""

import pyarrow.parquet  # noqa: F401  (read_rollouts)
import pytest
from mlflow.tracking import MlflowClient
from test_distributed import _ray_processes
from test_train_flow import metric_history, small_config

from flows.train import train
from steer.checkpoint import SHARDS, checkpoint_path
from steer.distributed.group import RankFailed
from steer.rollout_store import ROLLOUT_SCHEMA, read_rollouts

pytestmark = pytest.mark.flow

RAY = {"backend": "ray", "world_size": 2, "collective_timeout_s": 120}
MICRO = {"optim": {"mini_batch_prompts": 2, "micro_batch_size": 4, "lr": 1e-4}}  # 8 responses = 2 ranks x 4
# STEER's groups of 4 sequences: each lies on one rank (groups of 8 would straddle the ranks' 4 rows and be cut)
ALGO = {"algorithm": {"token_weighting": {"normaliser_group": 4}}}
COMPARED = ("actor/pg_loss", "actor/grad_norm", "reward/mean", "rollout/entropy")


def _config(out, steps, trainer=None):
    return small_config(
        out, steps=steps, eval={"every": 0, "max_new_tokens": 8}, trainer=trainer or {}, **MICRO, **ALGO
    )


def _same(a: dict[int, float], b: dict[int, float], steps) -> None:
    for s in steps:
        assert abs(a[s] - b[s]) <= 1e-6 * max(1.0, abs(b[s])), (s, a[s], b[s])


@pytest.fixture(scope="module")
def unbroken(prefect_harness, small_policy, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "run"
    train(_config(out, 3))
    return out


def test_two_ranks_then_one_process_equal_an_unbroken_local_run(unbroken, tmp_path):
    out = tmp_path / "run"
    summary = train(_config(out, 2, RAY))  # steps 0, 1 on two ranks
    assert not _ray_processes()  # the local Ray the run started is gone
    assert summary["steps"] == 2
    runs = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}").search_runs(["0", "1"])
    assert len(runs) == 1
    assert read_rollouts(out / "rollouts").schema.equals(ROLLOUT_SCHEMA, check_metadata=False)
    assert metric_history(out, "perf/tokens_per_s_per_rank") and metric_history(out, "perf/token_imbalance")
    ckpt = checkpoint_path(out / "checkpoints", 2)  # each rank wrote its own shard; nothing was gathered
    assert sorted(p.name for p in (ckpt / SHARDS).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not (ckpt / "optimizer.pt").exists()
    train(_config(out, 3))  # resume the ranks' sharded checkpoint in one process: step 2
    for key in COMPARED:
        _same(metric_history(out, key), metric_history(unbroken, key), range(3))


@pytest.mark.slow  # the other directions: ~90 s more
def test_one_process_then_two_ranks_then_two_ranks_again_equal_an_unbroken_local_run(unbroken, tmp_path):
    out = tmp_path / "run"
    train(_config(out, 1))
    train(_config(out, 2, RAY))  # resume a one-process checkpoint on two ranks: step 1
    train(_config(out, 3, RAY))  # resume the ranks' shards on two new ranks: step 2
    assert not _ray_processes()
    for key in COMPARED:
        _same(metric_history(out, key), metric_history(unbroken, key), range(3))


@pytest.mark.slow  # one more flow run with Ray (~60 s); tests/test_distributed.py names a hung and a dead rank
def test_a_rank_that_raises_fails_the_run_naming_it_and_leaves_no_ray_process(prefect_harness, small_policy, tmp_path):
    # a KL penalty without a reference model raises inside every rank's first micro-batch (no flow keeps one yet)
    config = _config(tmp_path / "run", 1, RAY).model_copy(deep=True)
    config.algorithm.kl_coef = 0.1
    with pytest.raises(RankFailed, match=r"^trainer rank 0 raised in update: ValueError: kl_coef > 0 needs ref_logp"):
        train(config)
    assert not _ray_processes()
