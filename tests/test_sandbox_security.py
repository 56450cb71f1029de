"""Security battery: hostile programs run through the code verifier are contained, fail, and leave the host as it was.

Every program is scored as a stdin/stdout problem whose expected output is a secret only the host knows (it lives in
this process's environment, in a root-only file, and behind a loopback listener), so a program passes only if an
attack leaked it. Each also has the statuses its limit should produce. After the whole battery (run in parallel, short
limits): the sentinel folders are byte-for-byte unchanged, the shared world-writable folders hold no marker files, the
loopback listener saw no connection, and no process of a sandbox uid, with a battery marker, or below this process
survives.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from steer.verifiers import sandbox
from steer.verifiers.code import run_code_tests, verify_code
from steer.verifiers.sandbox import Limits, isolation, run_program

pytestmark = pytest.mark.unit

SECRET = "steer-secret-" + uuid.uuid4().hex
MARKER = "steer-battery-" + uuid.uuid4().hex[:12]
LIMITS = Limits(wall_s=4, cpu_s=1, memory_mb=256, nproc=8, file_mb=2, nofile=32, tmpfs_mb=16, max_output_bytes=4096)
ANY_FAILURE = {"error", "signal", "timeout"}
KILLED = {"signal", "timeout"}

# name -> (source template, statuses allowed). Templates see: {sentinel} {tmp_sentinel} {host_pid} {port} {marker}.
HOSTILE: dict[str, tuple[str, set[str]]] = {
    # --- CPU, time, processes
    "infinite_loop": ("while True:\n    pass", KILLED),
    "cpu_threads": (
        "import threading\ndef burn():\n    while True: pass\n"
        "for _ in range(4): threading.Thread(target=burn).start()\nburn()",
        KILLED,
    ),
    "sleep_past_limit": ("import time\ntime.sleep(60)", {"timeout"}),
    "block_forever": ("import threading\nthreading.Event().wait()", {"timeout"}),
    "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", KILLED),
    "subprocess_bomb": (
        'import subprocess, sys\nsrc = \'import subprocess,sys; [subprocess.Popen([sys.executable, "-c", sys.argv[1], '
        "sys.argv[1]]) for _ in range(4)]; import time; time.sleep(30)'\n"
        "subprocess.Popen([sys.executable, '-c', src, src]).wait()",
        ANY_FAILURE,
    ),
    "thread_bomb": (
        "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(30,)).start()",
        ANY_FAILURE,
    ),
    "detached_double_fork": (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        os.execv('/bin/sleep', ['{marker}-daemon', '120'])\n    os._exit(0)\ntime.sleep(0.2)",
        {"error"},
    ),
    "detached_popen": (
        "import subprocess\n"
        "subprocess.Popen(['{marker}-popen', '120'], executable='/bin/sleep', start_new_session=True)",
        {"error"},
    ),
    # --- memory, stack, output, disk
    "memory_bomb": ("x = bytearray(8 << 30)", {"error"}),
    # MemoryError at the address-space limit, or SIGXCPU first when a loaded machine slows the allocation loop
    "memory_growth": ("chunks = []\nwhile True:\n    chunks.append(bytearray(50 << 20))", {"error", "signal"}),
    "deep_recursion": ("import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1) + 1\nf(0)", KILLED),
    # stdout/stderr are files under RLIMIT_FSIZE; Python ignores SIGXFSZ, so the write fails with EFBIG instead
    "stdout_flood": ("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", {"error", "signal"}),
    "stderr_flood": ("import sys\nwhile True:\n    sys.stderr.write('y' * 65536)", {"error", "signal"}),
    "big_file": ("with open('big', 'wb') as f:\n    f.write(b'z' * (100 << 20))", {"error"}),
    "inode_flood": ("for i in range(100000):\n    open(f'f{{i}}', 'w').close()", {"error"}),
    "tmpfs_fill": ("for i in range(1000):\n    open(f'g{{i}}', 'wb').write(b'w' * (1 << 20))", {"error"}),
    # --- files outside its folder
    "write_in_sentinel": ("open('{sentinel}/new.txt', 'w').write('pwned')", {"error"}),
    "append_sentinel_file": ("open('{sentinel}/data.txt', 'a').write('pwned')", {"error"}),
    "delete_sentinel_file": ("import os\nos.remove('{sentinel}/data.txt')", {"error"}),
    "rename_sentinel_file": ("import os\nos.rename('{sentinel}/data.txt', '{sentinel}/moved.txt')", {"error"}),
    "chmod_sentinel_file": ("import os\nos.chmod('{sentinel}/data.txt', 0o777)", {"error"}),
    "symlink_write": (
        "import os\nos.symlink('{sentinel}/data.txt', 'link')\nopen('link', 'w').write('pwned')",
        {"error"},
    ),
    "write_tmp_sentinel": ("open('{tmp_sentinel}/data.txt', 'w').write('pwned')", {"error"}),
    "write_shared_tmp": ("open('/tmp/{marker}-tmp', 'w').write('x')\nopen('/var/tmp/{marker}-vartmp', 'w')", {"error"}),
    "write_dev_shm": ("open('/dev/shm/{marker}-shm', 'w').write('x')", {"error"}),
    "write_repo_source": (f"open({sandbox.__file__!r}, 'a').write('# pwned')", {"error"}),
    # --- secrets and the host's processes
    "read_env_secret": ("import os\nprint(os.environ.get('STEER_TEST_SECRET', 'no secret'))", {"error"}),
    "read_secret_file": ("print(open('{sentinel}/secret.txt').read())", {"error"}),
    "read_parent_environ": ("print(open('/proc/{host_pid}/environ').read())", {"error"}),
    "scan_proc_environ": (
        "import os\nfor p in os.listdir('/proc'):\n    try:\n        d = open(f'/proc/{{p}}/environ').read()\n"
        "    except OSError:\n        continue\n    if 'STEER_TEST_SECRET=' in d:\n"
        "        print(d.split('STEER_TEST_SECRET=')[1].split(chr(0))[0])",
        {"error"},
    ),
    "kill_parent": ("import os, signal\nos.kill({host_pid}, signal.SIGKILL)", {"error"}),
    "kill_everything": ("import os, signal\nos.kill(-1, signal.SIGKILL)\nimport time\ntime.sleep(1)", ANY_FAILURE),
    "ptrace_parent": (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.ptrace(16, {host_pid}, None, None) == 0, ctypes.get_errno()",
        {"error"},
    ),
    # --- network
    "connect_loopback": (
        "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint(s.recv(100).decode())",
        {"error"},
    ),
    "udp_loopback": (
        "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {port}))",
        {"error"},
    ),
    "connect_internet": ("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)", {"error"}),
    # --- privileges and limits
    "raise_rlimits": (
        "import resource\nfor r in (resource.RLIMIT_CPU, resource.RLIMIT_AS, resource.RLIMIT_NPROC):\n"
        "    resource.setrlimit(r, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))",
        {"error"},
    ),
    "setuid_root": ("import os\nos.setuid(0)", {"error"}),
    "su_escalation": ("import subprocess\nsubprocess.run(['su', '-c', 'id'], check=True, timeout=2)", {"error"}),
    # unprivileged user namespaces are allowed here: "root" inside one still cannot read host files or lift limits
    "user_namespace_root": (
        "import subprocess\n"
        "r = subprocess.run(['unshare', '-Urn', 'cat', '{sentinel}/secret.txt'], capture_output=True)\n"
        "print(r.stdout.decode())",
        {"error"},
    ),
    "user_namespace_rlimits": (
        "import subprocess, sys\nsrc = 'import resource as r; r.setrlimit(r.RLIMIT_CPU, (r.RLIM_INFINITY,) * 2)'\n"
        "subprocess.run(['unshare', '-Ur', sys.executable, '-c', src], check=True)",
        {"error"},
    ),
    "mount_over_root": (
        "import subprocess\nsubprocess.run(['mount', '-t', 'tmpfs', 'x', '/srv'], check=True)",
        {"error"},
    ),
}


def _snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    return {p.name: (p.stat().st_mode, p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


def _sentinel(parent: str | None) -> Path:
    d = Path(tempfile.mkdtemp(prefix="steer-sentinel-", dir=parent))
    d.chmod(0o755)  # others may look but not write, like most of the host
    (d / "data.txt").write_text("original")
    (d / "data.txt").chmod(0o644)
    (d / "secret.txt").write_text(SECRET)
    (d / "secret.txt").chmod(0o600)
    return d


def _survivors(ignore: frozenset[str] = frozenset()) -> list[str]:
    """Live processes left by the battery: a sandbox uid, the marker in the command line, or a child of ours that
    was not already running before the battery (``ignore``: e.g. the session's Prefect test server).

    Checked by hand to see what it should: without namespaces and uid switch (``sandbox._run(..., namespaces=False,
    uid_mode="none")``) the ``detached_popen`` daemon escapes and is listed here.
    """
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if pid in ignore:
            continue
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uid, ppid = int(fields["Uid"].split()[0]), int(fields["PPid"])
        if fields["State"].strip().startswith("Z"):  # already dead, waiting for its parent to reap it
            continue
        if sandbox._UID_BASE <= uid < sandbox._UID_BASE + sandbox._UID_SPAN or MARKER in cmdline or ppid == os.getpid():
            if not _under_a_sibling_worker(int(pid)):
                found.append(f"{pid} uid={uid} ppid={ppid} {cmdline!r}")
    return found


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1 and len(chain) < 64:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        chain.append(pid)
    return chain


def _under_a_sibling_worker(pid: int) -> bool:
    """A live sandbox of another pytest-xdist worker (``make test`` runs two): it descends from our controller
    (our parent) through a process that is not us. An escaped process is reparented to init, so it never is."""
    chain = _ancestors(pid)
    parent = os.getppid()
    return os.environ.get("PYTEST_XDIST_WORKER") is not None and parent in chain and os.getpid() not in chain


@pytest.fixture(scope="module")
def battery():
    iso = isolation()
    parent = next((d for d in ("/var/lib", "/opt", "/srv") if os.access(d, os.W_OK)), None)
    sentinel, tmp_sentinel = _sentinel(parent), _sentinel(None)
    before = {sentinel: _snapshot(sentinel), tmp_sentinel: _snapshot(tmp_sentinel)}
    already_running = frozenset(filter(str.isdigit, os.listdir("/proc")))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port, connections, stop = listener.getsockname()[1], [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            connections.append(conn)
            conn.sendall(SECRET.encode())

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    os.environ["STEER_TEST_SECRET"] = SECRET
    fmt = dict(sentinel=sentinel, tmp_sentinel=tmp_sentinel, host_pid=os.getpid(), port=port, marker=MARKER)
    spec = {"kind": "stdin", "tests": [{"input": "", "output": SECRET}]}
    start = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=8) as ex:
            futures = {n: ex.submit(run_code_tests, src.format(**fmt), spec, LIMITS) for n, (src, _) in HOSTILE.items()}
            results = {n: f.result() for n, f in futures.items()}
    finally:
        del os.environ["STEER_TEST_SECRET"]
    elapsed = time.monotonic() - start
    time.sleep(0.2)
    after = {d: _snapshot(d) for d in before}
    survivors = _survivors(ignore=already_running)
    stop.set()
    server.join()
    listener.close()
    yield dict(
        iso=iso,
        results=results,
        before=before,
        after=after,
        survivors=survivors,
        connections=connections,
        elapsed=elapsed,
        sentinel=sentinel,
    )
    for d in before:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


def test_battery_is_large_enough():
    assert len(HOSTILE) >= 30


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_is_contained_and_fails(battery, name: str):
    result = battery["results"][name]
    assert not result.passed, f"{name} leaked the secret or passed: {result}"
    assert SECRET not in result.stdout + result.stderr
    assert result.status in HOSTILE[name][1], f"{name}: {result.status} rc={result.returncode} {result.stderr[-300:]}"
    assert result.wall_s < LIMITS.wall_s + 2


def test_host_is_unharmed(battery):
    assert battery["after"] == battery["before"], "a sentinel file changed"
    assert battery["survivors"] == [], "processes outlived their sandbox"
    assert battery["connections"] == [], "a sandbox reached the loopback listener"
    leftovers = [p for d in ("/tmp", "/var/tmp", "/dev/shm") if os.path.isdir(d) for p in os.listdir(d) if MARKER in p]
    assert leftovers == []  # the battery's wall time is a speed figure, measured in bench/bench_verifiers.py


def test_floods_are_truncated(battery):
    for name in ("stdout_flood", "stderr_flood"):
        result = battery["results"][name]
        assert len(result.stdout) <= LIMITS.max_output_bytes and len(result.stderr) <= LIMITS.max_output_bytes


def test_isolation_is_full_here(battery):
    # on this project's machines (root, util-linux unshare) every layer is on; elsewhere this documents what is not
    iso = battery["iso"]
    if os.geteuid() != 0:
        pytest.skip(f"not root: weaker isolation ({iso.notes})")
    assert (iso.namespaces, iso.uid_mode) == (True, "random"), iso.notes


def test_early_exit_does_not_fake_a_humaneval_pass():
    spec = {
        "kind": "humaneval",
        "prompt": "def add(a, b):\n",
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
        "entry_point": "add",
    }
    assert verify_code("    return a + b\n", spec, LIMITS)
    hacks = [
        "    import sys; sys.exit(0)\n",  # exits when the test calls it
        "    return 0\nimport os\nos._exit(0)\n",  # exits before the tests run
        "    raise SystemExit(0)\n",
        "    return 0\nprint('\\n' * 3)\nraise SystemExit\n",
    ]
    for hack in hacks:
        assert not verify_code(hack, spec, LIMITS), hack


MEMORY_HOG_FORKS = """
import os, sys, time
held = []
for _ in range(8):  # try for 8 children of 150 MB each: 1200 MB, above the sandbox's total of 4 x 256 MB
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        try:
            block = bytearray(150 << 20)  # touched: resident, not just reserved
            for i in range(0, len(block), 4096):
                block[i] = 1
            os.write(1, b"held\\n")
            time.sleep(3)
        except MemoryError:
            pass
        os._exit(0)
    held.append(pid)
for pid in held:
    os.waitpid(pid, 0)
"""


def test_a_sandbox_that_forks_memory_hungry_children_stays_under_its_stated_total():
    if isolation().uid_mode != "random":
        pytest.skip("RLIMIT_NPROC counts this sandbox's processes alone only with a uid of its own (root)")
    limits = Limits(wall_s=20, cpu_s=10, memory_mb=256, nproc=4)
    result = run_program(MEMORY_HOG_FORKS, limits=limits)
    held = result.stdout.count("held")
    assert 1 <= held <= limits.nproc - 1, result  # the parent is one of the nproc processes
    assert 150 * held + 256 <= limits.total_memory_mb == 1024
    assert Limits().total_memory_mb == 4096  # the default bound docs/verifiers.md states
