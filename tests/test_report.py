"""The ablation report: hand-computed statistics, PNGs from known curves, and the round trip through a real MLflow
store (parent and child runs made by MlflowTracker) back to the same table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from steer.comparison import render_report, run_summaries, summary_table, t_interval, table_markdown, weight_histogram
from steer.comparison.plots import omega_entropy_points
from steer.rollout_store import rollout_table, write_step
from tasks.comparison import ARMS_TAG, WEIGHT_HIST_ARTIFACT, child_runs, log_weight_histogram, publish_report
from tasks.comparison import rebuild_report as rebuild
from tasks.tracking import MlflowTracker

pytestmark = pytest.mark.unit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic_metrics(arms=("grpo", "steer_0.7"), seeds=(0, 1), steps=4) -> pd.DataFrame:
    """Entropy H = 1 - 0.1 (step + arm index) + 0.01 seed; accuracy 0.5 + 0.1 arm index + 0.05 seed at steps 0, 2, 4;
    Omega = -(step + 1) / 100; quadrant shares 0.4, 0.1, 0.3, 0.2."""
    rows = []
    for a, arm in enumerate(arms):
        for seed in seeds:
            run = f"{arm}-{seed}"
            for step in range(steps):
                rows.append((run, arm, seed, "rollout/entropy", step, 1 - 0.1 * (step + a) + 0.01 * seed))
                rows.append((run, arm, seed, "steer/omega_mean", step, -(step + 1) / 100))
                for q, share in zip(("pos_high", "pos_low", "neg_high", "neg_low"), (0.4, 0.1, 0.3, 0.2)):
                    rows.append((run, arm, seed, f"steer/quadrant/{q}/share", step, share))
            for step in range(0, steps + 1, 2):
                rows.append((run, arm, seed, "eval/accuracy", step, 0.5 + 0.1 * a + 0.05 * seed - 0.01 * step))
    return pd.DataFrame(rows, columns=["run_id", "arm", "seed", "key", "step", "value"])


def test_t_interval_by_hand():
    mean, half = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302652729911275 / math.sqrt(3))  # t_{0.975,2} * s / sqrt(n), s = 1
    assert t_interval([0.5])[0] == 0.5 and math.isnan(t_interval([0.5])[1])
    assert t_interval([2.0, 2.0]) == (2.0, 0.0)
    assert all(math.isnan(x) for x in t_interval([]))


def test_entropy_ends_are_window_means():
    """With 20 steps the first and last 2 steps (10%) are averaged: H = 1 - 0.1 step gives ends 0.95 and -0.85."""
    m = synthetic_metrics(arms=("grpo",), seeds=(0,), steps=20)
    r = run_summaries(m).iloc[0]
    assert r.final_entropy == pytest.approx(1 - 0.1 * 18.5)
    assert r.entropy_drop_pct == pytest.approx(100 * (0.95 - (1 - 0.1 * 18.5)) / 0.95)


def test_run_summaries_and_table():
    m = synthetic_metrics()
    runs = run_summaries(m).set_index("run_id")
    r = runs.loc["steer_0.7-1"]  # a = 1, seed = 1: accuracy 0.65 - 0.01 step; H from 0.91 to 0.61
    assert r.start_accuracy == pytest.approx(0.65) and r.final_accuracy == pytest.approx(0.61)
    assert r.best_accuracy == pytest.approx(0.63)  # over the trained steps 2 and 4: the start (0.65) is not one
    assert r.final_entropy == pytest.approx(0.61) and r.entropy_drop_pct == pytest.approx(100 * 0.3 / 0.91)
    assert [r[f"{q}_share"] for q in ("pos_high", "pos_low", "neg_high", "neg_low")] == pytest.approx(
        [0.4, 0.1, 0.3, 0.2]
    )
    assert math.isnan(r.mean_weight)  # no steer/weight_mean logged
    w = pd.DataFrame(
        [("w", "steer", 0, "steer/weight_mean", s, v) for s, v in enumerate((0.9, 0.8, 1.0))], columns=m.columns
    )
    assert run_summaries(w).iloc[0].mean_weight == pytest.approx(0.9)

    table = summary_table(m, ["steer_0.7", "grpo"])
    assert table.arm.tolist() == ["steer_0.7", "grpo"] and table.seeds.tolist() == [2, 2]
    grpo = table.set_index("arm").loc["grpo"]
    assert grpo.final_accuracy_mean == pytest.approx(0.485)  # seeds: 0.46, 0.51
    assert grpo.final_accuracy_ci95 == pytest.approx(12.706204736174698 * 0.05 / 2)  # t_{0.975,1} (0.05/sqrt 2)/sqrt 2
    md = table_markdown(table)
    header = (
        "| arm | seeds | start accuracy | final accuracy | best accuracy | final entropy | entropy drop % | mean w "
        "| pos_high | pos_low | neg_high | neg_low |"
    )
    assert md.splitlines()[0] == header
    assert "| grpo | 2 | 0.525 ± 0.318 | 0.485 ± 0.318 |" in md  # start: seeds 0.50, 0.55
    assert len([x for x in md.splitlines() if x.startswith("|")]) == 2 + 2  # header, rule, one row per arm


def test_omega_points_pair_step_t_with_the_change_to_t_plus_1():
    points = omega_entropy_points(synthetic_metrics(steps=3))
    assert len(points) == 2 * 2 * 2  # arms x seeds x (steps - 1)
    np.testing.assert_allclose(points.delta_entropy, -0.1)
    assert sorted(set(points.omega.round(4))) == [-0.02, -0.01]


def test_weight_histogram_from_parquet(tmp_path):
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # (N=2, T=3): 5 tokens
    weights = torch.tensor([[0.7, 1.0, 1.0], [0.71, 0.99, 1.0]])
    zeros = torch.zeros(2, 3)
    table = rollout_table(
        run_id="r",
        step=0,
        prompt_ids=["p"],
        prompts=["1+1"],
        answers=["2"],
        group_index=torch.tensor([0, 0]),
        sample_index=torch.tensor([0, 1]),
        responses=["2", "3"],
        response_ids=torch.ones(2, 3, dtype=torch.long),
        response_mask=mask,
        truncated=torch.tensor([False, False]),
        rewards=torch.tensor([1.0, -1.0]),
        correct=torch.tensor([True, False]),
        old_logp=zeros,
        entropy=zeros,
        advantage=zeros,
        omega=zeros,
        steer_weight=weights,
    )
    write_step(tmp_path, 0, table)
    hist = weight_histogram(tmp_path, bins=10)
    assert hist["count"].sum() == 5  # the padding's weight is not stored
    assert hist.loc[hist.bin_left == 0.7, "count"].item() == 2  # 0.7 (float32: 0.69999999) and 0.71
    assert hist["count"].iloc[-1] == 3  # 0.99, 1.0, 1.0 (1 lies in the last bin)


def test_render_report_writes_readable_pngs_and_skips_what_is_missing(tmp_path):
    m = synthetic_metrics()
    hist = pd.DataFrame(
        {"arm": "steer_0.7", "seed": 0, "bin_left": [0.7, 0.9], "bin_right": [0.8, 1.0], "count": [3, 7]}
    )
    report = render_report(m, hist, tmp_path)
    for name in ("entropy", "accuracy", "quadrants", "steer_weights", "omega_vs_entropy"):
        data = report.files[name].read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name
    assert pd.read_csv(report.files["summary_csv"]).arm.tolist() == ["grpo", "steer_0.7"]

    no_extras = m[~m.key.isin(["steer/omega_mean"])]
    report = render_report(no_extras, None, tmp_path / "bare")
    assert set(report.skipped) == {"steer_weights", "omega_vs_entropy"}
    assert "entropy" in report.files and not (tmp_path / "bare" / "steer_weights.png").exists()


def make_ablation_store(root: Path, metrics: pd.DataFrame, rollouts: Path | None = None) -> tuple[str, str]:
    """A real MLflow store holding an ablation: a parent run at ``root``, a child per (arm, seed) with ``metrics``
    logged step by step; ``rollouts`` (a Parquet folder) gives every child a weight histogram. Returns (uri, id)."""
    arms = list(dict.fromkeys(metrics.arm))
    parent = MlflowTracker(root, experiment="abl", run_name="parent", tags={ARMS_TAG: ",".join(arms)})
    for (arm, seed), run in metrics.groupby(["arm", "seed"], sort=False):
        child = MlflowTracker(
            root / arm / f"seed-{seed}",
            experiment="abl",
            tracking_uri=parent.tracking_uri,
            parent_run_id=parent.run_id,
            tags={"steer.arm": arm, "steer.seed": seed},
        )
        for step, rows in run.groupby("step"):
            child.log_metrics(dict(zip(rows.key, rows.value)), step=int(step))
        if rollouts is not None:
            log_weight_histogram(child.client, child.run_id, rollouts)
        child.close()
    return parent.tracking_uri, parent.run_id


@pytest.fixture(scope="module")
def ablation_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    rollouts = root / "rollouts"
    mask = torch.ones(2, 2)
    table = rollout_table(
        run_id="r",
        step=0,
        prompt_ids=["p"],
        prompts=["1+1"],
        answers=["2"],
        group_index=torch.tensor([0, 0]),
        sample_index=torch.tensor([0, 1]),
        responses=["2", "3"],
        response_ids=torch.ones(2, 2, dtype=torch.long),
        response_mask=mask,
        truncated=torch.tensor([False, False]),
        rewards=torch.tensor([1.0, -1.0]),
        correct=torch.tensor([True, False]),
        old_logp=mask * 0,
        entropy=mask * 0,
        advantage=mask * 0,
        omega=mask * 0,
        steer_weight=torch.tensor([[0.7, 1.0], [0.85, 1.0]]),
    )
    write_step(rollouts, 0, table)
    uri, parent = make_ablation_store(root, synthetic_metrics(), rollouts)
    return uri, parent


@pytest.mark.flow
def test_report_round_trip_through_mlflow(ablation_store, tmp_path):
    uri, parent = ablation_store
    client = MlflowClient(tracking_uri=uri)
    children = child_runs(client, parent)
    assert len(children) == 4 and {r.data.tags["mlflow.parentRunId"] for r in children} == {parent}
    report = rebuild(client, parent, tmp_path)
    expected = summary_table(synthetic_metrics(), ["grpo", "steer_0.7"])
    pd.testing.assert_frame_equal(report.table, expected, check_exact=False, rtol=1e-9)
    assert "steer_weights" in report.files  # every child has the histogram artifact
    urls = publish_report(client, parent, report)
    names = {f.path for f in client.list_artifacts(parent, "report")}
    assert {"report/entropy.png", "report/summary.md", "report/summary_table.json"} <= names
    local = Path(urls["entropy"].removeprefix("file://"))  # a sqlite store: file URIs
    assert local.read_bytes().startswith(PNG_MAGIC)
    assert client.list_artifacts(children[0].info.run_id, str(Path(WEIGHT_HIST_ARTIFACT).parent))
    with pytest.raises(LookupError, match="no child runs"):
        child_runs(client, children[0].info.run_id)


@pytest.mark.flow
def test_a_tracker_on_a_shared_sqlite_store_keeps_artifacts_beside_it(ablation_store, tmp_path, monkeypatch):
    uri, parent = ablation_store
    monkeypatch.chdir(tmp_path)  # MLflow's own default would be ./mlruns here
    tracker = MlflowTracker(tmp_path / "elsewhere", experiment="other", tracking_uri=uri, parent_run_id=parent)
    store_dir = Path(uri.removeprefix("sqlite:///")).parent
    location = tracker.client.get_experiment(tracker.experiment_id).artifact_location
    assert location == (store_dir / "mlartifacts").as_uri() and not (tmp_path / "mlruns").exists()
    assert tracker.client.get_run(tracker.run_id).data.tags["mlflow.parentRunId"] == parent
    tracker.close()


def test_long_entropy_curves_are_smoothed_short_ones_not():
    from steer.comparison.plots import smoothing_window

    assert [smoothing_window(n) for n in (4, 40, 41, 150, 300)] == [1, 1, 2, 8, 15]
