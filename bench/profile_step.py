"""Where a steady-state training step's CPU time goes: py-spy samples of the real ``steer train`` run of
``bench_vs_trl.py``'s "ours" side, attributed to components.

It starts the same command line as ``bench_vs_trl.py`` (same model folder, prompts and settings) with more steps,
waits until the run has logged ``--skip`` steps to MLflow (start-up, the first evaluation and warm-up are over), then
records ``--seconds`` of py-spy samples of the flow process and its children (``--subprocesses``: the ephemeral Prefect
server, the verifier's pool), active threads only (py-spy's default: a thread blocked in a wait is not sampled).

Each sample is a stack; it is attributed to the first component found walking from the innermost frame outwards
(``COMPONENTS``): a matmul under an MLflow call counts as torch, a Prefect frame with our code below it as ours.
Printed: the share of samples per component and process, the run's steps per second over the window, and the ten
heaviest frames outside torch. Needs py-spy (in the ``bench`` extra) and ptrace rights (root in a container).

    PYTHONPATH=. .venv/bin/python bench/profile_step.py [--threads 1] [--seconds 20] [--skip 4]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_vs_trl  # noqa: E402  (same folder: the shared model and command line)

COMPONENTS = (
    ("torch: forward/backward/optimizer", ("torch/", "transformers/")),
    ("prefect (client: task runs, states, events)", ("prefect/",)),
    ("mlflow", ("mlflow/",)),
    ("pyarrow / parquet", ("pyarrow/",)),
    ("sqlalchemy / sqlite / http (server side)", ("sqlalchemy/", "aiosqlite/", "uvicorn/", "starlette/", "fastapi/")),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    ("asyncio / threading", ("asyncio/", "threading.py", "concurrent/futures/", "anyio/")),
    ("steer (our library, tasks, flows)", ("/steer/", "/tasks/", "/flows/", "/steer_cli/")),
)


def steps_logged(out: Path) -> int:
    db = out / "mlflow.db"
    if not db.exists():
        return 0
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            row = con.execute("select max(step) from metrics where key = 'timing/step'").fetchone()
    except sqlite3.Error:
        return 0
    return (row[0] or 0) if row else 0


def process_kind(frames: list[str]) -> str:
    """The process a sample is from, by its command line (py-spy's innermost ``process PID:"cmd"`` frame)."""
    cmd = frames[0]
    if "uvicorn" in cmd and "prefect" in cmd:
        return "Prefect server (ephemeral, uvicorn)"
    if "_pool_worker" in cmd:
        return "verifier pool"
    if "steer_cli.main train" in cmd:
        return "steer train (the flow process)"
    return cmd[:80]


def component(stack: list[str]) -> str:
    for frame in reversed(stack):  # innermost first
        for name, marks in COMPONENTS:
            if any(m in frame for m in marks):
                return name
    return "other (interpreter, imports, stdlib)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=int, default=20, help="sampling window")
    ap.add_argument("--skip", type=int, default=4, help="steps logged before sampling starts")
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--keep", help="copy the raw (collapsed) profile here")
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    work = Path(tempfile.mkdtemp(prefix="profile-step-"))
    model = bench_vs_trl.build_model(work / "qwen2-4x128")
    out = work / "run"
    cmd = bench_vs_trl.ours_command(model, out, args.threads, steps=400)
    env = {**os.environ, **bench_vs_trl.ENV, "PYTHONPATH": str(bench_vs_trl.ROOT), "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.Popen(  # its own process group: the ephemeral Prefect server goes with it at the end
        cmd, cwd=bench_vs_trl.ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        while steps_logged(out) < args.skip:
            if proc.poll() is not None:
                raise RuntimeError(f"the run ended before step {args.skip}:\n{proc.stderr.read().decode()[-3000:]}")
            time.sleep(0.5)
        first = steps_logged(out)
        raw = work / "profile.txt"
        spy_cmd = [spy, "record", "--pid", str(proc.pid), "--subprocesses", "--duration", str(args.seconds)]
        spy_cmd += ["--rate", str(args.rate), "--format", "raw", "--output", str(raw), "--nonblocking"]
        subprocess.run(spy_cmd, check=True, capture_output=True)
        last = steps_logged(out)
    finally:
        proc.terminate()  # SIGTERM: the run closes its stores and stops its server (steer_cli.main)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever it left behind
        except ProcessLookupError:
            pass
    by_comp: collections.Counter = collections.Counter()
    by_proc: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text:
            continue
        n = int(count)
        stack = stack_text.split(";")
        kind = process_kind([f for f in stack if f.startswith("process ")][-1:] or ["?"])
        stack = [f for f in stack if not f.startswith("process ")] or ["(native code, no Python frame)"]
        comp = component(stack)
        by_comp[(kind, comp)] += n
        by_proc[kind] += n
        if not comp.startswith("torch"):
            own[stack[-1]] += n
        total += n
    steps = max(last - first, 1)
    print(f"{args.threads} torch thread(s); window {args.seconds} s; steps {first} -> {last} ({steps} steps, "
          f"{args.seconds / steps:.3f} s a step); {total} active samples at {args.rate}/s")  # fmt: skip
    for kind in by_proc:
        print(f"\n{kind}: {by_proc[kind]} samples, {by_proc[kind] / args.rate / steps:.3f} CPU-s a step")
        for (k, comp), n in by_comp.most_common():
            if k == kind:
                print(f"  {n / total:6.1%}  {n / args.rate / steps:6.3f} s/step  {comp}")
    print("\nheaviest innermost frames outside torch:")
    for frame, n in own.most_common(10):
        print(f"  {n / total:6.1%}  {frame[:140]}")
    if args.keep:
        shutil.copy(raw, args.keep)


if __name__ == "__main__":
    main()
