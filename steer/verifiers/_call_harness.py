"""Candidate side of a function-call test: call the candidate on each input, write each output by value to fd 3.

Run in the sandbox as the program itself, with ``steer/verifiers/_codec.py``'s text prepended (``encode``,
``decode``). Stdin holds ``{"source", "entry_point" | "fn_name", "calls": [[args, kwargs], ...], "timeout_s"}``
(args a list, kwargs a dict, both encoded), inputs only: the expected outputs never enter this process, and neither
does anything that proves success. The verdict is the trusted side's (``steer.verifiers.code``), which re-validates
every line written here.

Each call gets a per-call timer (``setitimer``). Line ``i`` of fd 3 is ``[i, "ok", encode(output)]`` or, where the
call raised (a timeout included) or its output is not a plain value, ``[i, "raise", "Type: message"]``, after which
the harness stops with status 1. Everything the harness needs is bound before the candidate's code runs, so
rebinding ``json``, ``os.write`` or a builtin afterwards does not reach it; a candidate that corrupts this process
in deeper ways can only produce a wrong or invalid output, which fails.
"""

import json as _json
import os as _os
import signal as _signal
import sys as _sys
import traceback as _traceback

_CHANNEL_FD = 3


def _too_slow(signum, frame):
    raise TimeoutError("a test ran past its time limit")


def _steer_main(
    encode=encode,  # noqa: F821 - from _codec.py, prepended
    decode=decode,  # noqa: F821
    dumps=_json.dumps,
    write=_os.write,
    setitimer=_signal.setitimer,
    timer=_signal.ITIMER_REAL,
    exit_now=_os._exit,
    print_exc=_traceback.print_exc,
    getattr=getattr,
    enumerate=enumerate,
    BaseException=BaseException,
    type=type,
):
    spec = _json.loads(_sys.stdin.read())
    null = _os.open(_os.devnull, _os.O_RDONLY)
    _os.dup2(null, 0)  # nothing left on stdin to re-read
    _os.close(null)
    calls = [(decode(args), decode(kwargs)) for args, kwargs in spec["calls"]]
    timeout_s = spec["timeout_s"]
    _signal.signal(_signal.SIGALRM, _too_slow)
    g = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(spec["source"], "solution.py", "exec"), g)
    if "fn_name" in spec:
        fn = getattr(g["Solution"](), spec["fn_name"])
    else:
        fn = g[spec["entry_point"]]
    for i, (args, kwargs) in enumerate(calls):
        try:
            setitimer(timer, timeout_s)
            out = fn(*args, **kwargs)
            setitimer(timer, 0)
            line = dumps([i, "ok", encode(out)])
        except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are failures too
            setitimer(timer, 0)
            print_exc()
            write(_CHANNEL_FD, (dumps([i, "raise", type(e).__name__ + ": " + str(e)[:200]]) + "\n").encode())
            exit_now(1)
        write(_CHANNEL_FD, (line + "\n").encode())
    _sys.stdout.flush()


_steer_main()
