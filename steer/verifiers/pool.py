"""A process pool with a per-item wall-clock limit: a stuck item costs its own time budget, never the run.

``multiprocessing.Pool`` cannot take back a task from a worker stuck in C code (a sympy simplification that never
ends), and ``signal.alarm`` based limits only work on a main thread. ``WatchdogPool`` gives each worker its own pipe,
sends it small chunks, and gets one result per item back; when a worker has made no progress for ``timeout_s``
seconds, the parent SIGKILLs it, records ``None`` for the item it was on, requeues the rest of its chunk and starts a
replacement. A worker that dies on its own (segfault, OOM kill) or an item whose function raises is a *fault*, not an
answer: the item is retried (``item_retries`` times, a crashed worker replaced first), and only then recorded as
``None`` and counted in ``num_errors``, so a caller can tell "the verifier failed" from "the answer is wrong".

Workers are fresh interpreters (``python -m steer.verifiers._pool_worker FN FD_IN FD_OUT``) that import the
function by its dotted name: unlike multiprocessing's ``spawn``, nothing re-imports the caller's ``__main__``, so the
pool works from scripts without a ``__main__`` guard, notebooks and threads alike.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

_START_TIMEOUT_S = 120  # a worker must have imported its function by then
# the folder holding the ``steer`` package, so workers import the same code as the parent even when uninstalled
_SRC_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def available_cpus() -> int:
    """Cores this process may run on (its affinity mask), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _exit_code(process: subprocess.Popen) -> int | None:
    try:  # its pipe closes a moment before it can be reaped
        return process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        return None


class _Worker:
    def __init__(self, fn: str, initializer: str | None):
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "steer.verifiers._pool_worker",
                fn,
                initializer or "",
                str(to_child_r),
                str(from_child_w),
            ],
            pass_fds=(to_child_r, from_child_w),
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_SRC_ROOT, os.environ.get("PYTHONPATH")]))},
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.send_conn = Connection(to_child_w, readable=False)
        self.recv_conn = Connection(from_child_r, writable=False)
        self.ready = False  # True once the worker has imported ``fn`` and said so
        self.queue: deque[int] = deque()  # indices sent and not yet answered, in order
        self.started = self.last_progress = time.monotonic()

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
        self.process.wait(timeout=10)
        self.send_conn.close()
        self.recv_conn.close()


class WatchdogPool:
    """Maps ``fn`` (a dotted ``"module:function"`` name) over items in ``num_workers`` processes, per-item time limit.

    ``map(items) -> list`` keeps the input order; an item whose worker was killed (time limit), or that crashed its
    worker or raised on every one of its ``1 + item_retries`` attempts, gives ``None`` (``num_timeouts`` and
    ``num_errors`` count them).
    ``timeout_s`` counts from the moment the worker finished its previous item (or got the chunk), so queueing in a
    chunk does not eat an item's budget; a worker's start-up (imports, then the optional ``initializer``, another
    dotted name called once with no arguments) is not counted either. Items and results must pickle. Workers start
    at construction and are reused across ``map`` calls; ``close()`` stops them.
    """

    def __init__(
        self,
        fn: str,
        num_workers: int | None = None,
        timeout_s: float = 15.0,
        chunksize: int = 16,
        initializer: str | None = None,
        item_retries: int = 2,
    ):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.fn, self.initializer = fn, initializer
        self.num_workers = num_workers or available_cpus()
        self.timeout_s = timeout_s
        self.chunksize = max(1, chunksize)
        self.item_retries = item_retries
        self.num_timeouts = 0  # items killed at the time limit (not retried: a stuck item would stall the map again)
        self.num_crashes = 0  # worker deaths, retries included
        self.num_errors = 0  # items given up after ``item_retries`` retries of a crash or an exception
        self.last_error: str | None = None  # what the last given-up item died of
        self._workers: list[_Worker] | None = [_Worker(fn, initializer) for _ in range(self.num_workers)]

    def _check_ready(self, w: _Worker, block: bool = False) -> bool:
        """Whether ``w`` has imported its function; with ``block``, wait for it. Raises if it cannot start."""
        if not w.ready:
            if w.recv_conn.poll(_START_TIMEOUT_S if block else 0):
                try:
                    w.ready = w.recv_conn.recv() == "ready"
                except (EOFError, OSError):
                    pass
                if not w.ready:
                    w.kill()
                    raise RuntimeError(f"pool worker for {self.fn!r} failed to start (exit {w.process.returncode})")
            elif block or time.monotonic() - w.started > _START_TIMEOUT_S:
                w.kill()
                raise RuntimeError(f"pool worker for {self.fn!r} did not start within {_START_TIMEOUT_S} s")
        return w.ready

    def wait_ready(self) -> None:
        """Block until every worker has started (imports and initializer done)."""
        for w in self._workers or []:
            self._check_ready(w, block=True)

    def _replace(self, k: int) -> None:
        self._workers[k].kill()
        self._workers[k] = _Worker(self.fn, self.initializer)

    def map(self, items: Sequence[Any]) -> list[Any]:
        if self._workers is None:
            raise RuntimeError("WatchdogPool is closed")
        results: list[Any] = [None] * len(items)
        attempts = [0] * len(items)
        pending = deque(range(len(items)))

        def fault(idx: int, what: str) -> None:  # a crash or an exception: retry the item, then give up on it
            attempts[idx] += 1
            if attempts[idx] <= self.item_retries:
                pending.appendleft(idx)
            else:
                self.num_errors += 1
                self.last_error = what

        # chunks small enough that every worker gets several: the tail of a map is not one worker's long chunk
        chunk = max(1, min(self.chunksize, len(items) // (4 * self.num_workers)))
        workers = self._workers
        while pending or any(w.queue for w in workers):
            for w in workers:  # top up idle workers that have started (a replacement may still be importing)
                if not w.queue and pending and self._check_ready(w):
                    ids = [pending.popleft() for _ in range(min(chunk, len(pending)))]
                    w.queue.extend(ids)
                    w.last_progress = time.monotonic()
                    w.send_conn.send([(i, items[i]) for i in ids])
            busy = [w for w in workers if w.queue]
            starting = [w for w in workers if not w.ready]
            deadline = min((w.last_progress + self.timeout_s for w in busy), default=time.monotonic() + 1.0)
            wait([w.recv_conn for w in busy + starting], max(0.0, deadline - time.monotonic()))
            for k, w in enumerate(workers):
                if not w.queue:
                    continue
                try:
                    while w.queue and w.recv_conn.poll():
                        idx, value, error = w.recv_conn.recv()
                        w.queue.popleft()
                        w.last_progress = time.monotonic()
                        if error is None:
                            results[idx] = value
                        else:
                            fault(idx, error)
                    if not w.queue or time.monotonic() - w.last_progress < self.timeout_s:
                        continue
                    self.num_timeouts += 1  # alive but silent for timeout_s: stuck on its head item
                    w.queue.popleft()  # the item it was on stays None
                except (EOFError, OSError):  # died mid-chunk (segfault, OOM kill): its head item is retried
                    self.num_crashes += 1
                    fault(w.queue.popleft(), f"worker died (exit {_exit_code(w.process)})")
                pending.extendleft(reversed(w.queue))  # the rest of its chunk goes back
                w.queue.clear()
                self._replace(k)
        return results

    def close(self) -> None:
        """Stop the workers (politely, then SIGKILL after 2 s); idempotent."""
        if self._workers is None:
            return
        for w in self._workers:
            try:
                w.send_conn.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + 2
        for w in self._workers:
            try:
                w.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            w.kill()
        self._workers = None

    def __enter__(self) -> WatchdogPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
