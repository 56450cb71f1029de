"""The sandbox's first process: prepares the namespaces as root, then runs the untrusted program as a child.

Run by ``steer.verifiers.sandbox`` as ``python -I -S _sandbox_init.py SRC_DIR/.sandbox.cfg`` (a ``marshal``'d
dict), usually as PID 1 of fresh mount/network/PID/IPC/UTS namespaces made by ``unshare``. Only the standard library,
nothing from ``steer``: it must start in a few milliseconds (hence marshal, not json, which imports re and enum).
Steps:

1. (``private_mounts``) read the program files from the host folder, then mount empty tmpfs over every
   world-writable place (``/tmp``, ``/var/tmp``, ``/dev/shm``, ``/run/lock``): ``/tmp`` gets a size-limited
   root-owned tmpfs holding ``/tmp/sandbox`` (the program's only writable folder), the others read-only empties.
2. fork; the child sets rlimits, ``PR_SET_NO_NEW_PRIVS``, drops to an unprivileged uid/gid with no groups, and execs
   the program in its folder with a scrubbed environment.
   A results channel (``channel_fd`` in the config) is moved to fd 3 first, the only fd the program inherits
   besides 0-2.
3. the parent (root, out of the program's reach: another uid cannot signal or ptrace it) waits for that child and
   exits with its status (128 + signal number if it was killed). As PID 1 its exit makes the kernel kill every
   process left in the namespace, detached grandchildren included.

Errors of the launcher itself go to stderr prefixed ``steer-sandbox:`` with exit code 125.
"""

import ctypes
import marshal
import os
import resource
import sys

PREFIX = "steer-sandbox:"
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
PR_SET_NO_NEW_PRIVS = 38
CONFIG_NAME = ".sandbox.cfg"
CHANNEL_FD = 3
SHARED_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")


def fail(msg):
    os.write(2, f"{PREFIX} {msg}\n".encode())
    os._exit(125)


def mount_tmpfs(libc, target, flags, options):
    if libc.mount(b"tmpfs", target.encode(), b"tmpfs", ctypes.c_ulong(flags), options.encode()) != 0:
        fail(f"mount tmpfs on {target}: {os.strerror(ctypes.get_errno())}")


def prepare_private_mounts(libc, cfg):
    files = {}
    for name in os.listdir(cfg["src_dir"]):
        if name == CONFIG_NAME:
            continue
        with open(os.path.join(cfg["src_dir"], name), "rb") as f:
            files[name] = f.read()
    for d in SHARED_WRITABLE:
        if not os.path.isdir(d):
            continue
        if d == "/tmp":
            mount_tmpfs(libc, d, MS_NOSUID | MS_NODEV, f"size={cfg['tmpfs_mb']}m,nr_inodes=4096,mode=0755")
        else:
            mount_tmpfs(libc, d, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0755")
    workdir = cfg["workdir"]
    os.mkdir(workdir, 0o700)
    for name, data in files.items():
        with open(os.path.join(workdir, name), "wb") as f:
            f.write(data)
    if cfg["uid"] is not None:
        for path in [workdir, *(os.path.join(workdir, n) for n in files)]:
            os.chown(path, cfg["uid"], cfg["gid"])


def exec_program(libc, cfg, err_w):
    try:
        for name, (soft, hard) in cfg["rlimits"].items():
            resource.setrlimit(getattr(resource, "RLIMIT_" + name), (soft, hard))
        if libc is not None and libc.prctl(PR_SET_NO_NEW_PRIVS, *(ctypes.c_ulong(a) for a in (1, 0, 0, 0))) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if cfg["uid"] is not None:
            os.setgroups([])
            os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
            os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
        os.chdir(cfg["workdir"])
        os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
    except BaseException as e:  # noqa: BLE001 - report anything, then die without running Python cleanup
        os.write(err_w, f"{type(e).__name__}: {e}".encode())
    os._exit(125)


def main():
    with open(sys.argv[1], "rb") as f:
        cfg = marshal.loads(f.read())
    os.unlink(sys.argv[1])  # in the fallback mode the program's folder is the host folder: leave nothing in it
    channel = cfg.get("channel_fd")
    if channel is not None and channel != CHANNEL_FD:  # the results channel: always fd 3 for the program
        os.dup2(channel, CHANNEL_FD)  # inheritable: it survives the exec
        os.close(channel)
    libc = ctypes.CDLL(None, use_errno=True)
    if cfg["private_mounts"]:
        prepare_private_mounts(libc, cfg)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(err_r)
        exec_program(libc, cfg, err_w)
    os.close(err_w)
    err = os.read(err_r, 4096)  # EOF at once when the exec succeeded (the pipe closed on exec)
    if err:
        fail(f"cannot start the program: {err.decode(errors='replace')}")
    while True:  # as PID 1 we also inherit orphans: reap them until our own child is done
        try:
            done, status = os.wait()
        except ChildProcessError:
            fail("lost the program's process")
        if done == pid:
            break
    os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))


if __name__ == "__main__":
    main()
