"""Our training step vs TRL's GRPOTrainer on the same work, side by side.

Same local model folder (a 4-layer, 128-wide Qwen2 initialised with a fixed seed and a byte-level BPE tokenizer
trained here on the embedded arithmetic problems; nothing from the hub), the same prompts (the embedded training
set, no chat template), 8 prompts x 8 samples x 32 new tokens, fp32 on the CPU, one optimizer step per rollout
(2 micro-batches of 32 accumulated), gradient checkpointing off, GRPO (group z-score advantage, clip 0.2/0.2,
token-mean, no KL), the math verifier's process pool as the reward for both.

- ours: the real ``steer train`` command line (``python -m steer_cli.main train --preset tiny --algorithm grpo``
  with ``--set`` overrides) in a fresh process: Prefect flow, tasks, MLflow, Parquet, all as a user runs it. Phases
  come from the flow's ``timing/*`` metrics (``timing/old_logp`` is the no-grad old-log-prob forward, 0 when the
  update is on-policy and skips it); a step's wall time is the interval between two steps' MLflow timestamps, so it
  includes metric logging and Prefect's bookkeeping.
- TRL: ``trl.GRPOTrainer`` with the matching ``GRPOConfig`` in a fresh process, timed by wrapping its own methods
  (``_generate`` -> generation, ``_calculate_rewards`` -> scoring, ``_get_per_token_logps_and_entropies`` inside
  ``_generate_and_score_completions`` -> old log-probs, ``training_step`` minus ``_prepare_inputs`` plus the optimizer
  step -> update); a step is the interval between two ``on_step_end`` callbacks.

Runs alternate (ours, TRL, then TRL, ours, ...) in pairs at each thread count; the first ``--warmup`` steps of every
run are excluded. Reported: per phase the median over all measured steps and the minimum, per pair the ratio of the
two runs' median steps, and the median of those ratios (the headline); start-up is process start to the first step's
start (ours includes the flow's initial held-out evaluation of 8 prompts x 1 sample x 8 tokens).

    /work/main/.venv/bin/python bench/bench_vs_trl.py [--pairs 3] [--steps 10] [--threads 1 2]

Needs the ``bench`` extra (``pip install -e .[bench]``: trl).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS, SAMPLES, NEW_TOKENS, MICRO, LR, SEED = 8, 8, 32, 32, 1e-5, 0
PHASES = ("generation", "scoring", "old_logp", "update", "rest")
ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "TOKENIZERS_PARALLELISM": "false",
}


# ---------------------------------------------------------------- the shared model folder and prompts


def problems(n: int = 2_000) -> list[dict]:
    """The embedded training problems (what ``steer train --preset tiny`` trains on, first ``n``)."""
    from steer.data import ArithmeticTask, train_problems

    return train_problems(ArithmeticTask(), n)


def build_model(folder: Path) -> Path:
    """A 4-layer, 128-wide Qwen2 with a byte-level BPE tokenizer trained on the problems; seeded, no hub."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    eos = "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=[eos], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    texts = [p["prompt"] + " \\boxed{" + str(p["answer"]) + "}" for p in problems()]
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=eos)
    torch.manual_seed(SEED)
    cfg = Qwen2Config(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- ours: the real `steer train` command


def ours_command(model: Path, out: Path, threads: int, steps: int) -> list[str]:
    sets = {
        "model.name_or_path": str(model),
        "model.num_threads": threads,
        "model.gradient_checkpointing": False,
        "rollout.prompts_per_step": PROMPTS,
        "rollout.samples_per_prompt": SAMPLES,
        "rollout.max_new_tokens": NEW_TOKENS,
        "rollout.temperature": 1.0,
        "rollout.top_p": 1.0,
        "optim.mini_batch_prompts": PROMPTS,  # one optimizer step per rollout
        "optim.micro_batch_size": MICRO,
        "optim.lr": LR,
        "data.train_size": 2_000,
        "data.heldout_size": 8,
        "eval.every": 0,
        "eval.samples_per_prompt": 1,
        "eval.max_new_tokens": 8,
        "checkpoint_every": 0,
    }
    cmd = [sys.executable, "-m", "steer_cli.main", "train", "--preset", "tiny", "--algorithm", "grpo"]
    cmd += ["--steps", str(steps), "--seed", str(SEED), "--output-dir", str(out)]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


def ours_result(out: Path, spawned: float) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    run_id = (out / "mlflow_run_id").read_text().strip()

    def hist(key: str) -> list:
        return sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)

    step_hist = hist("timing/step")
    stamps = [m.timestamp / 1e3 for m in step_hist]
    series = {k: [m.value for m in hist(f"timing/{k}")] for k in ("rollout", "score", "update", "old_logp")}
    if not series["old_logp"]:  # a tree whose update task does not time the old-log-prob forward separately
        series["old_logp"] = [float("nan")] * len(stamps)
    steps = []
    for s in range(1, len(stamps)):  # step s's period: from step s-1's metrics to step s's
        gen, sc, upd, old = (series[k][s] for k in ("rollout", "score", "update", "old_logp"))
        wall = stamps[s] - stamps[s - 1]
        o = 0.0 if old != old else old  # NaN: unknown, left inside the update
        steps.append(
            {"wall": wall, "generation": gen, "scoring": sc, "old_logp": old, "update": upd - o,
             "rest": wall - gen - sc - upd}
        )  # fmt: skip
    first_start = stamps[0] - step_hist[0].value  # the first step's t0 (its metrics are logged timing/step later)
    return {"startup": first_start - spawned, "steps": steps}


# ---------------------------------------------------------------- TRL: GRPOTrainer, instrumented


def trl_worker(model: str, out: str, threads: int, steps: int, spawned: float) -> None:
    """Runs in its own process: GRPOTrainer on the same folder, prompts and settings; prints one JSON line."""
    import torch

    torch.set_num_threads(threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from steer.verifiers.math import MathScorer, rewards_from_correct

    rows = problems()
    data = Dataset.from_list([{"prompt": p["prompt"], "answer": str(p["answer"])} for p in rows])
    scorer = MathScorer()
    scorer.wait_ready()

    def reward(prompts, completions, answer, **_):
        return rewards_from_correct(scorer.score(completions, answer), "pm1").tolist()

    args = GRPOConfig(
        output_dir=out,
        per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=PROMPTS * SAMPLES // MICRO,
        steps_per_generation=PROMPTS * SAMPLES // MICRO,  # one generation per optimizer step: on-policy
        num_iterations=1,
        num_generations=SAMPLES,
        max_completion_length=NEW_TOKENS,
        temperature=1.0,
        top_p=1.0,
        learning_rate=LR,
        lr_scheduler_type="constant",
        weight_decay=0.01,
        max_grad_norm=1.0,
        beta=0.0,
        epsilon=0.2,
        loss_type="dapo",  # token-mean over the optimizer step's tokens, as ours
        scale_rewards="group",
        max_steps=steps,
        logging_steps=1_000_000,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        seed=SEED,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(model)
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    trainer = GRPOTrainer(model=policy, reward_funcs=reward, args=args, train_dataset=data, processing_class=tokenizer)

    acc = dict.fromkeys(("generation", "scoring", "old_logp", "train_step", "prepare", "optim"), 0.0)
    inside = {"gen_score": False}

    def timed(name, fn, when=None):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                if when is None or when():
                    acc[name] += time.perf_counter() - t

        return wrapper

    gen_score = trainer._generate_and_score_completions

    def generate_and_score(*a, **k):
        inside["gen_score"] = True
        try:
            return gen_score(*a, **k)
        finally:
            inside["gen_score"] = False

    trainer._generate = timed("generation", trainer._generate)
    trainer._calculate_rewards = timed("scoring", trainer._calculate_rewards)
    trainer._get_per_token_logps_and_entropies = timed(
        "old_logp", trainer._get_per_token_logps_and_entropies, when=lambda: inside["gen_score"]
    )
    trainer._generate_and_score_completions = generate_and_score
    trainer._prepare_inputs = timed("prepare", trainer._prepare_inputs)
    trainer.training_step = timed("train_step", trainer.training_step)

    steps_out, marks = [], {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            marks.setdefault("first", time.time())
            marks.setdefault("last", time.perf_counter())

        def on_pre_optimizer_step(self, args, state, control, **kw):
            marks["opt"] = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kw):
            acc["optim"] += time.perf_counter() - marks["opt"]

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            wall = now - marks["last"]
            marks["last"] = now
            update = acc["train_step"] - acc["prepare"] + acc["optim"]
            gen_old = acc["generation"] + acc["scoring"] + acc["old_logp"]
            steps_out.append(
                {"wall": wall, "generation": acc["generation"], "scoring": acc["scoring"], "old_logp": acc["old_logp"],
                 "update": update, "rest": wall - gen_old - update}
            )  # fmt: skip
            for k in acc:
                acc[k] = 0.0

    trainer.add_callback(Clock())
    trainer.train()
    scorer.close()
    print("RESULT " + json.dumps({"startup": marks["first"] - spawned, "steps": steps_out}), flush=True)


# ---------------------------------------------------------------- the driver


def run_one(kind: str, model: Path, work: Path, threads: int, steps: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=work))
    env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    spawned = time.time()
    if kind == "ours":
        cmd = ours_command(model, out / "run", threads, steps)
    else:
        cmd = [sys.executable, __file__, "--trl-worker", str(model), str(out), str(threads), str(steps), str(spawned)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{kind} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    if kind == "ours":
        return ours_result(out / "run", spawned)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def summarise(runs: dict[str, list[dict]], warmup: int) -> dict:
    out = {}
    for kind, rs in runs.items():
        measured = [s for r in rs for s in r["steps"][warmup:]]
        out[kind] = {
            "median": {p: statistics.median(s[p] for s in measured) for p in ("wall", *PHASES)},
            "min": {p: min(s[p] for s in measured) for p in ("wall", *PHASES)},
            "startup": statistics.median(r["startup"] for r in rs),
            "run_medians": [statistics.median(s["wall"] for s in r["steps"][warmup:]) for r in rs],
        }
    ratios = [a / b for a, b in zip(out["ours"]["run_medians"], out["trl"]["run_medians"])]
    out["pair_ratios"] = ratios
    out["ratio"] = statistics.median(ratios)
    return out


def report(threads: int, s: dict) -> None:
    print(f"\n== {threads} torch thread(s): ours/TRL = {s['ratio']:.2f} (median of pairs "
          f"{', '.join(f'{r:.2f}' for r in s['pair_ratios'])})")  # fmt: skip
    print(f"{'phase (s)':<14}{'ours med':>10}{'ours min':>10}{'TRL med':>10}{'TRL min':>10}")
    for p in ("wall", *PHASES):
        o, t = s["ours"], s["trl"]
        print(f"{p:<14}{o['median'][p]:>10.3f}{o['min'][p]:>10.3f}{t['median'][p]:>10.3f}{t['min'][p]:>10.3f}")
    print(f"{'start-up':<14}{s['ours']['startup']:>10.1f}{'':>10}{s['trl']['startup']:>10.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3, help="alternated (ours, TRL) pairs per thread count")
    ap.add_argument("--steps", type=int, default=10, help="steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="first steps of each run left out")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-vs-trl-"))
    model = build_model(work / "qwen2-4x128")
    load = os.getloadavg()
    print(f"model folder {model}; load average before {load[0]:.2f}; {os.cpu_count()} CPUs")
    t0 = time.perf_counter()
    summary = {}
    for threads in args.threads:
        runs: dict[str, list[dict]] = {"ours": [], "trl": []}
        for i in range(args.pairs):
            order = ("ours", "trl") if i % 2 == 0 else ("trl", "ours")
            for kind in order:
                runs[kind].append(run_one(kind, model, work, threads, args.steps))
        summary[threads] = summarise(runs, args.warmup)
        summary[threads]["load_after"] = os.getloadavg()[0]
        report(threads, summary[threads])
    print(f"\nbench wall time {time.perf_counter() - t0:.0f} s; load average after {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--trl-worker":
        m, o, th, st, sp = sys.argv[2:7]
        trl_worker(m, o, int(th), int(st), float(sp))
    else:
        main()
