"""Entry point of a ``WatchdogPool`` worker: ``python -m steer.verifiers._pool_worker FN INIT FD_IN FD_OUT``.

``FN`` and ``INIT`` are ``module:function`` names; ``INIT`` (may be empty) is called once before the worker reports
ready. Each result goes back as ``(index, value, None)``, or ``(index, None, "ExcType: message")`` when ``FN``
raised: the parent decides whether to retry (``steer.verifiers.pool``).

``STEER_POOL_WRAP=module:function``, when set, wraps ``FN`` (``FN = wrap(FN)``) in every worker: the hook fault-
injection tests use to crash a real worker on a chosen item (``tests/faults.py``).

Kept apart from ``steer.verifiers.pool`` so that running it as ``__main__`` does not re-execute a module the package
has already imported.
"""

from __future__ import annotations

import importlib
import os
import sys
from multiprocessing.connection import Connection


def _resolve(dotted: str):
    module, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(module), attr)


def main(fn_name: str, init_name: str, fd_in: int, fd_out: int) -> None:
    """Worker loop: say "ready", then for each chunk [(index, item)] send back (index, fn(item), error) one by one."""
    fn = _resolve(fn_name)
    if os.environ.get("STEER_POOL_WRAP"):
        fn = _resolve(os.environ["STEER_POOL_WRAP"])(fn)
    if init_name:
        _resolve(init_name)()
    recv_conn, send_conn = Connection(fd_in, writable=False), Connection(fd_out, readable=False)
    send_conn.send("ready")
    while True:
        try:
            chunk = recv_conn.recv()
        except (EOFError, OSError):  # the parent went away
            return
        if chunk is None:
            return
        for idx, item in chunk:
            try:
                value, error = fn(item), None
            except Exception as e:  # a fault of the function, not an answer: the parent retries, then counts it
                value, error = None, f"{type(e).__name__}: {e}"[:500]
            send_conn.send((idx, value, error))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
