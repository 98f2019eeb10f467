"""The ``namespaces`` and ``capabilities`` layers.

``namespaces`` moves the process into new user, network and mount namespaces with one
``unshare`` (unprivileged user namespaces make this work without root), then:

- maps only uid/gid 65534 (nobody) inside to the worker's own uid/gid outside, with
  ``setgroups`` denied. When the worker runs as root, files still see the child as uid 0 from
  outside (an unprivileged process can map only its own uid); with capabilities dropped that
  means owner rights on root-owned files, which is what Landlock is for;
- leaves the new network namespace empty (only a down loopback): no route anywhere;
- makes every mount private, mounts a fresh tmpfs of ``tmp_bytes_max`` on /tmp, mounts a tmpfs
  of ``scratch_bytes_max`` on the scratch directory (a disk quota: a full scratch gives ENOSPC)
  and bind-mounts the code directory read-only. When those directories live under /tmp their
  paths are recreated inside the new /tmp, so every path the parent handed over still works.

Whether the machine allows all this is first tried in a short-lived forked process (a few
milliseconds), so a machine that refuses leaves the child unchanged and the layer is reported
missing with the reason; once that probe passed, a failure is an error.

``capabilities`` then empties every capability set and the bounding set and sets
no_new_privs, so nothing granted by the new user namespace (or by running as root without one)
is left for customer code.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys

from client.sandbox import _sys
from client.sandbox.base import LayerUnavailable, SandboxConfig
from client.sandbox.rlimit import fmt_bytes

INSIDE_ID = 65534  # nobody / nogroup
_INODE_BYTES = 16 << 10  # one tmpfs inode per this many bytes of quota (at least 1024)
_TMPFS_FLAGS = _sys.MS_NOSUID | _sys.MS_NODEV | _sys.MS_NOEXEC


class NamespaceLayer:
    name = "namespaces"

    def __init__(self, config: SandboxConfig) -> None:
        self._config = config
        self.private_tmp: str | None = None  # set once /tmp is the private tmpfs
        self._outside_uid = -1

    def apply(self) -> None:
        if not _sys.IS_LINUX:
            raise LayerUnavailable("needs Linux")
        problem = _probe()
        if problem is not None:
            raise LayerUnavailable(problem)
        cfg = self._config
        uid = os.geteuid()
        _enter_namespaces()
        self._outside_uid = uid
        # A handle on the code directory in the new mount namespace, taken before /tmp is
        # replaced (a bind mount's source must belong to the caller's mount namespace).
        code_fd = _open_path(cfg.code_dir) if cfg.code_dir is not None else None
        # The Python installation and our package may live under /tmp too (a checkout or
        # venv there): keep them visible, read-only, in the new /tmp.
        kept = [(p, fd) for p in _runtime_dirs_under_tmp()
                if (fd := _open_path(p)) is not None]
        try:
            _sys.mount("tmpfs", "/tmp", "tmpfs", _TMPFS_FLAGS, _tmpfs_options(cfg.tmp_bytes_max))
            self.private_tmp = "/tmp"
            if cfg.code_dir is not None and code_fd is not None:
                _reattach(cfg.code_dir, code_fd)
                _bind_read_only(cfg.code_dir, code_fd)
            for path, fd in kept:
                _reattach(path, fd)
                _bind_read_only(path, fd)
        finally:
            if code_fd is not None:
                os.close(code_fd)
            for _, fd in kept:
                os.close(fd)
        if cfg.scratch_dir is not None:
            os.makedirs(cfg.scratch_dir, mode=0o700, exist_ok=True)
            opts = _tmpfs_options(cfg.scratch_bytes_max)
            _sys.mount("tmpfs", cfg.scratch_dir, "tmpfs", _TMPFS_FLAGS, opts)
            os.chdir(cfg.scratch_dir)  # the old working directory is the disk under the tmpfs

    def describe(self) -> str:
        cfg = self._config
        parts = ["empty network", f"private /tmp ({fmt_bytes(cfg.tmp_bytes_max)})"]
        if cfg.scratch_dir is not None:
            parts.append(f"scratch quota {fmt_bytes(cfg.scratch_bytes_max)}")
        if cfg.code_dir is not None:
            parts.append("read-only code")
        outside = f"uid {self._outside_uid} outside" if self._outside_uid >= 0 else ""
        parts.append(f"uid {INSIDE_ID}" + (f" ({outside})" if outside else ""))
        return "namespaces: " + ", ".join(parts)


def _enter_namespaces() -> None:
    """unshare, map nobody to our own ids, make every mount private."""
    uid, gid = os.geteuid(), os.getegid()
    try:
        _sys.unshare(_sys.CLONE_NEWUSER | _sys.CLONE_NEWNET | _sys.CLONE_NEWNS)
    except OSError as exc:
        raise _NoUserns(_why_no_userns(exc)) from None
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{INSIDE_ID} {uid} 1\n")
    _write("/proc/self/gid_map", f"{INSIDE_ID} {gid} 1\n")
    _sys.mount(None, "/", None, _sys.MS_REC | _sys.MS_PRIVATE)


class _NoUserns(Exception):
    pass


def _probe() -> str | None:
    """Try the namespace steps in a throwaway forked process: ``None`` if they all work.

    Some systems allow the unshare but not what follows (AppArmor's restriction of
    unprivileged user namespaces leaves them without capabilities, so mounts fail). Learning
    that in a fork keeps this process unchanged when the layer is unavailable.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the forked probe)
        code = 0
        try:
            os.close(read_fd)
            _enter_namespaces()
            _sys.mount("tmpfs", "/tmp", "tmpfs", _TMPFS_FLAGS, _tmpfs_options(1 << 20))
        except _NoUserns as exc:
            os.write(write_fd, str(exc).encode())
            code = 1
        except BaseException as exc:
            os.write(write_fd, f"user namespaces work, but {exc}".encode())
            code = 1
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        reason = pipe.read(2000).decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    return reason or f"the namespace probe failed (wait status {status})"


class CapabilitiesLayer:
    """No capabilities at all, in any set, and no way to gain them (no_new_privs)."""

    name = "capabilities"

    def apply(self) -> None:
        if not _sys.IS_LINUX:
            raise LayerUnavailable("needs Linux")
        _drop_bounding_set()
        with contextlib.suppress(OSError):  # kernels before 4.3 have no ambient set
            _sys.prctl(_sys.PR_CAP_AMBIENT, _sys.PR_CAP_AMBIENT_CLEAR_ALL)
        _sys.clear_capabilities()
        _sys.prctl(_sys.PR_SET_NO_NEW_PRIVS, 1)
        left = _sys.effective_capabilities()
        if left:
            raise RuntimeError(f"capabilities {left:#x} are still effective after capset")

    def describe(self) -> str:
        return "capabilities: none (bounding set empty, no_new_privs)"


def _drop_bounding_set() -> None:
    cap = 0
    while cap < 64:
        try:
            _sys.prctl(_sys.PR_CAPBSET_DROP, cap)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return  # past the kernel's last capability
            if exc.errno == errno.EPERM:
                return  # no CAP_SETPCAP: not root, so nothing to drop that exec could regain
            raise
        cap += 1


def _open_path(path: str) -> int:
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _same_dir(path: str, fd: int) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    ref = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (ref.st_dev, ref.st_ino)


def _runtime_dirs_under_tmp() -> list[str]:
    """The outermost directories under /tmp that Python needs: its prefixes, the stdlib,
    sys.path entries and the ``client`` package (never a whole checkout)."""
    import client

    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                  os.path.dirname(os.__file__), os.path.dirname(client.__file__),
                  *[p for p in sys.path if p]]
    project = os.path.dirname(os.path.dirname(os.path.realpath(client.__file__)))
    found: set[str] = set()
    for raw in candidates:
        path = os.path.realpath(raw)
        if path.startswith("/tmp/") and os.path.isdir(path) and path != project:
            found.add(path)
    keep: list[str] = []
    for path in sorted(found, key=len):
        if not any(path.startswith(k + "/") for k in keep):
            keep.append(path)
    return keep


def _reattach(path: str, fd: int) -> None:
    """Make ``path`` name the directory ``fd`` refers to again (after /tmp was replaced)."""
    if _same_dir(path, fd):
        return
    os.makedirs(path, mode=0o700, exist_ok=True)
    _sys.mount(f"/proc/self/fd/{fd}", path, None, _sys.MS_BIND)


def _bind_read_only(path: str, fd: int) -> None:
    """Bind ``path`` onto itself and make that mount read-only.

    Flags the new user namespace inherited locked (nosuid, nodev, noexec, the atime mode) must
    be kept in the remount, or the kernel refuses it.
    """
    if _same_dir(path, fd) and not os.path.ismount(path):
        _sys.mount(f"/proc/self/fd/{fd}", path, None, _sys.MS_BIND)
    flags = _sys.MS_BIND | _sys.MS_REMOUNT | _sys.MS_RDONLY | _TMPFS_FLAGS
    current = os.statvfs(path).f_flag
    for st_flag, ms_flag in (
        (os.ST_NOATIME, _sys.MS_NOATIME),
        (os.ST_NODIRATIME, _sys.MS_NODIRATIME),
        (os.ST_RELATIME, _sys.MS_RELATIME),
    ):
        if current & st_flag:
            flags |= ms_flag
    _sys.mount(None, path, None, flags)


def _tmpfs_options(size_bytes: int) -> str:
    inodes = max(1024, size_bytes // _INODE_BYTES)
    return f"size={size_bytes},nr_inodes={inodes},mode=0700"


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _why_no_userns(exc: OSError) -> str:
    base = f"unshare(CLONE_NEWUSER|CLONE_NEWNET|CLONE_NEWNS) failed: {exc.strerror}"
    if exc.errno == errno.EPERM:
        return (
            base + " (unprivileged user namespaces are disabled: see sysctls "
            "kernel.unprivileged_userns_clone, user.max_user_namespaces and "
            "kernel.apparmor_restrict_unprivileged_userns, or a container's seccomp policy)"
        )
    if exc.errno == errno.ENOSPC:
        return base + " (user.max_user_namespaces is 0 or used up)"
    if exc.errno == errno.EINVAL:
        return base + " (the kernel lacks user or network namespaces, or the child has threads)"
    return base
