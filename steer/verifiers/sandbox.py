"""Run an untrusted Python program with limits, alone, and leave the host as it was.

Each run (``run_program``) gets, where the machine allows it (``isolation()`` says which parts it got):

- fresh network, mount, PID, IPC and UTS namespaces (``unshare``): no network at all (not even loopback up), an
  empty private ``/tmp`` (size-limited tmpfs) with the program's folder ``/tmp/sandbox`` in it, read-only empties
  over the other world-writable folders (``/var/tmp``, ``/dev/shm``, ``/run/lock``), its own ``/proc``; the PID
  namespace's first process is the launcher, whose exit kills every process the program left behind;
- when we are root, a random unprivileged uid/gid of its own (no groups, ``no_new_privs``): it cannot write the
  host's files, signal or ptrace host processes, and ``RLIMIT_NPROC`` (not enforced for root) counts its processes
  only -- a fork bomb in one sandbox does not starve another;
- rlimits: CPU seconds (``RLIMIT_CPU``, then SIGKILL), address space (``RLIMIT_AS``), processes (``RLIMIT_NPROC``),
  file size (``RLIMIT_FSIZE``, stdout/stderr included: they are files), open files, no core dumps. Address space is
  limited per process and processes per sandbox, so a sandbox as a whole holds at most ``Limits.total_memory_mb`` =
  ``nproc x memory_mb`` (4 x 1024 MB by default) whatever it forks (where its own uid makes RLIMIT_NPROC count
  its processes alone);
- a wall-clock limit enforced by the parent, which then SIGKILLs the whole session (``start_new_session``);
- a scrubbed environment (PATH, HOME, LANG only) and ``python -I`` (no user site, no ``PYTHON*`` variables);
- output read back truncated to ``max_output_bytes``.

What is not isolated: the program can read world-readable files of the host (there is no private root filesystem
as ``bubblewrap`` would give), may create user namespaces where the kernel allows it (it is "root" only inside them:
host files and its rlimits stay out of reach), and runs on the host kernel.

Fallbacks, recorded in ``Isolation.notes``: as root without working ``unshare`` (e.g. a container without
CAP_SYS_ADMIN) the program still gets its own uid, rlimits and a host temp folder, and its leftover processes are
killed by uid, but it shares the network and ``/tmp``. Not root: it runs as this user (it could write the user's
files), a child that calls ``setsid`` can outlive the run, and RLIMIT_NPROC counts all of the user's processes.
"""

from __future__ import annotations

import functools
import marshal
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_init.py")
_UNSHARE_FLAGS = ["--net", "--mount", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc"]
_UID_BASE, _UID_SPAN = 1_600_000_000, 1 << 24  # far above any real account; one random uid per run
_RNG = random.SystemRandom()  # not the global ``random``: runs seeded alike must not pick the same uids
_NOBODY = 65534
_INNER_WORKDIR = "/tmp/sandbox"
SANDBOX_ERROR_PREFIX = "steer-sandbox:"


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run. Defaults suit HumanEval-style tests (a second of work, a few MB)."""

    wall_s: float = 10.0  # wall clock, enforced by the parent (catches sleeping and blocked programs)
    cpu_s: int = 5  # RLIMIT_CPU per process; SIGKILL one second later
    memory_mb: int = 1024  # RLIMIT_AS (virtual memory) per process
    nproc: int = 4  # RLIMIT_NPROC: processes + threads of the sandbox's uid (bounds the sandbox's total memory)
    file_mb: int = 16  # RLIMIT_FSIZE: largest file it may write, stdout and stderr included
    nofile: int = 64  # RLIMIT_NOFILE
    tmpfs_mb: int = 64  # size of the private /tmp holding its folder
    max_output_bytes: int = 1 << 20  # stdout/stderr read back at most this much each

    @property
    def total_memory_mb(self) -> int:
        """The most address space one sandbox can hold, all its processes together: ``nproc x memory_mb``."""
        return self.nproc * self.memory_mb


@dataclass
class SandboxResult:
    """Outcome of one run. ``status``: ok | error (non-zero exit) | signal (killed, e.g. by a limit) | timeout."""

    status: str
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    truncated: bool = False
    channel: str = ""  # what the program wrote on fd 3 (``run_program(..., channel=True)`` only)
    note: str = ""  # why a verifier failed a run that exited 0 (wrong answer, invalid output), else empty
    fallback: bool = False  # the verdict came from an in-sandbox harness (``steer.verifiers.code``), not the host

    @property
    def passed(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Isolation:
    """What this machine lets the sandbox enforce (probed once per process by ``isolation()``)."""

    namespaces: bool  # unshare net/mount/pid/ipc/uts works
    uid_mode: str  # "random" (unique uid per run), "nobody" (shared uid 65534) or "none" (runs as us)
    python: str  # interpreter the programs run with (must be executable by the sandbox uid)
    notes: list[str] = field(default_factory=list)


class SandboxError(RuntimeError):
    """The sandbox itself could not run (not the program failing)."""


def _scrubbed_env(home: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }


def _rlimits(limits: Limits) -> dict[str, tuple[int, int]]:
    mb = 1 << 20
    return {
        "CPU": (limits.cpu_s, limits.cpu_s + 1),
        "AS": (limits.memory_mb * mb, limits.memory_mb * mb),
        "NPROC": (limits.nproc, limits.nproc),
        "FSIZE": (limits.file_mb * mb, limits.file_mb * mb),
        "NOFILE": (limits.nofile, limits.nofile),
        "CORE": (0, 0),
        "MEMLOCK": (0, 0),
    }


def _read_capped(f, cap: int) -> tuple[str, bool]:
    f.seek(0)
    data = f.read(cap + 1)
    return data[:cap].decode("utf-8", errors="replace"), len(data) > cap


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` (fallback mode only, where no PID namespace reaps them)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                if any(line.startswith("Uid:") and int(line.split()[1]) == uid for line in f):
                    os.kill(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def _run(
    source: str, stdin: str, limits: Limits, python: str, namespaces: bool, uid_mode: str, channel: bool = False
) -> SandboxResult:
    uid = {"random": _UID_BASE + _RNG.randrange(_UID_SPAN), "nobody": _NOBODY, "none": None}[uid_mode]
    src_dir = tempfile.mkdtemp(prefix="steer-sbx-")
    try:
        with open(os.path.join(src_dir, "prog.py"), "w", encoding="utf-8") as f:
            f.write(source)
        workdir = _INNER_WORKDIR if namespaces else src_dir
        if uid is not None and not namespaces:
            for path in (src_dir, os.path.join(src_dir, "prog.py")):
                os.chown(path, uid, uid)
        cfg = {
            "private_mounts": namespaces,
            "src_dir": src_dir,
            "workdir": workdir,
            "tmpfs_mb": limits.tmpfs_mb,
            "uid": uid,
            "gid": uid,
            "rlimits": {k: list(v) for k, v in _rlimits(limits).items()},
            "argv": [python, "-I", "prog.py"],
            "env": _scrubbed_env(workdir),
        }
        cfg_path = os.path.join(src_dir, ".sandbox.cfg")
        cmd = [python, "-I", "-S", _LAUNCHER, cfg_path]  # the launcher runs as root: any interpreter will do
        if namespaces:
            cmd = [shutil.which("unshare") or "unshare", *_UNSHARE_FLAGS, "--", *cmd]
        with (
            tempfile.TemporaryFile() as fin,
            tempfile.TemporaryFile() as fout,
            tempfile.TemporaryFile() as ferr,
            tempfile.TemporaryFile() as fchan,
        ):
            if channel:  # the launcher moves it to fd 3 before the program starts
                cfg["channel_fd"] = fchan.fileno()
            with open(cfg_path, "wb") as f:
                f.write(marshal.dumps(cfg))
            fin.write(stdin.encode())
            fin.seek(0)
            start = time.monotonic()
            proc = subprocess.Popen(
                cmd,
                stdin=fin,
                stdout=fout,
                stderr=ferr,
                cwd=src_dir,
                env=_scrubbed_env(src_dir),
                start_new_session=True,
                pass_fds=(fchan.fileno(),) if channel else (),
            )
            timed_out = False
            try:
                proc.wait(timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # unshare, launcher, program and all they spawned in the group
                except ProcessLookupError:  # it ended between the timeout and the kill
                    pass
                proc.wait()
            wall = time.monotonic() - start
            if not namespaces:  # no PID namespace took the stragglers down with it
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                if uid is not None:
                    _kill_uid(uid)
            stdout, trunc_out = _read_capped(fout, limits.max_output_bytes)
            stderr, trunc_err = _read_capped(ferr, limits.max_output_bytes)
            chan, trunc_chan = _read_capped(fchan, limits.max_output_bytes) if channel else ("", False)
    finally:
        shutil.rmtree(src_dir, ignore_errors=True)
    rc = proc.returncode
    if rc == 125 and stderr.startswith(SANDBOX_ERROR_PREFIX):
        raise SandboxError(stderr.strip())
    if timed_out:
        status = "timeout"
    elif rc == 0:
        status = "ok"
    elif rc > 128 or rc < 0:
        status = "signal"
    else:
        status = "error"
    return SandboxResult(status, rc, stdout, stderr, wall, trunc_out or trunc_err or trunc_chan, chan)


@functools.cache
def isolation() -> Isolation:
    """Probe (once) which isolation this machine allows and which interpreter the sandbox uid can run."""
    notes: list[str] = []
    namespaces = False
    if shutil.which("unshare") and os.geteuid() == 0:
        probe = subprocess.run(
            ["unshare", *_UNSHARE_FLAGS, "--", "true"], capture_output=True, timeout=30, env=_scrubbed_env("/")
        )
        namespaces = probe.returncode == 0
    if not namespaces:
        notes.append("no namespaces (unshare missing, not root, or refused): network and /tmp are shared")
    uid_modes = ["random", "nobody"] if os.geteuid() == 0 else ["none"]
    if os.geteuid() != 0:
        notes.append("not root: the program runs as this user; RLIMIT_NPROC counts all of the user's processes")
    candidates = [sys.executable, shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")]
    probe_limits = Limits(wall_s=30)
    for uid_mode in uid_modes:
        for python in dict.fromkeys(filter(None, candidates)):
            try:
                r = _run("print(6 * 7)", "", probe_limits, python, namespaces, uid_mode)
            except SandboxError as e:
                notes.append(f"{uid_mode} uid with {python}: {e}")
                continue
            if r.passed and r.stdout.strip() == "42":
                if uid_mode == "nobody":
                    notes.append("random uids refused: all sandboxes share uid 65534 and its RLIMIT_NPROC")
                return Isolation(namespaces, uid_mode, python, notes)
            notes.append(f"{uid_mode} uid cannot run {python}: {r.stderr.strip()[-200:]}")
    raise SandboxError("no interpreter runs inside the sandbox: " + "; ".join(notes))


def run_program(source: str, stdin: str = "", limits: Limits | None = None, channel: bool = False) -> SandboxResult:
    """Run ``source`` as ``prog.py`` in a fresh sandbox with ``stdin`` as its standard input; see the module doc.

    With ``channel`` the program also gets fd 3, a file of its own whose contents come back as ``result.channel``
    (capped like stdout): a results channel that printing cannot write to.
    """
    iso = isolation()
    return _run(source, stdin, limits or Limits(), iso.python, iso.namespaces, iso.uid_mode, channel)


def run_many(
    sources: Sequence[str], stdins: Sequence[str] | None = None, limits: Limits | None = None, max_workers: int = 4
) -> list[SandboxResult]:
    """``run_program`` over many programs, ``max_workers`` at a time (threads waiting on child processes)."""
    stdins = stdins if stdins is not None else [""] * len(sources)
    with ThreadPoolExecutor(max_workers=max_workers) as ex:
        return list(ex.map(lambda a: run_program(a[0], a[1], limits), zip(sources, stdins)))
