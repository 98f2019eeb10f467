"""The ``namespaces`` and ``capabilities`` layers.

``namespaces`` gives the child its own network namespace (empty: only a down loopback, no route
anywhere) and mount namespace, and an unprivileged uid. How depends on who runs the worker.

As root (effective uid 0), the child does its mounts while it is still root, then drops to
uid/gid 65534 (nobody/nogroup) for real: the capability bounding set emptied (while
CAP_SETPCAP is still there), ``setgroups([])``, ``setresgid``, ``setresuid``, then no_new_privs
(a set-user-ID-root program runs as nobody too) and not dumpable (other uid-65534 processes may
not ptrace it or read its memory). It checks that ``getresuid()`` and ``getresgid()`` are 65534
three times, that no group and no capability is left and that ``setuid(0)`` fails. The child is
then uid 65534 inside and outside, with no user namespace: files it creates belong to 65534,
and a root-only file is closed to it even without Landlock. It cannot undo root's mounts (it
holds no CAP_SYS_ADMIN anywhere).

Why mount first and drop second, rather than drop first and then unshare a user namespace as
nobody: that order works on this machine (an unprivileged process may create a user namespace
and map 65534 inside to 65534 outside, once it has made itself dumpable again so that it may
write its own uid_map), but after the drop the child can no longer reach a Python installed
under root's 0700 home (here /root/.pyenv), and a bind mount's source must be opened in the new
mount namespace, so after the drop. Mounting as root first lets the child hide such a directory
under a tmpfs and bind the installation back at the same path (see mounts.py); it also does not
depend on unprivileged user namespaces, which many distributions restrict.

Otherwise (not root), one ``unshare`` moves the child into new user, network and mount
namespaces (unprivileged user namespaces make this work), mapping only uid/gid 65534 inside to
the worker's own uid/gid outside, with ``setgroups`` denied: uid 65534 is then a name only.

If a root worker's child cannot make the real drop (a root without CAP_SYS_ADMIN, say), ``auto``
mode falls back to the user-namespace way and says so: ``uid 65534 (uid 0 outside: no real
drop, ...)``. ``strict`` mode reports the layer missing instead, so ``--sandbox strict`` never
runs a root worker's customer code without the drop.

Either way every mount is made private, a fresh tmpfs of ``tmp_bytes_max`` goes on /tmp, one of
``scratch_bytes_max`` on the scratch directory (a disk quota: a full scratch gives ENOSPC; owned
by 65534 when root made it) and the code directory is bound read-only. When those directories
live under /tmp their paths are recreated inside the new /tmp, so every path the parent handed
over still works.

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
from collections.abc import Callable

from client.sandbox import _sys
from client.sandbox.base import LayerUnavailable, SandboxConfig
from client.sandbox.mounts import (
    COVER_BYTES,
    READ_SEARCH,
    allows,
    bind_read_only,
    is_beneath,
    make_dirs,
    mount_tmpfs,
    open_dir,
    outermost,
    reattach,
    runtime_dirs,
    search_blocker,
)
from client.sandbox.rlimit import fmt_bytes

NOBODY = 65534  # nobody / nogroup: the child's uid and gid (inside; outside too, as root)
DESCRIBE_CHARS_MAX = 200  # schema.worker.Hello.sandbox entries
_PROBE_TMP_BYTES = 1 << 20


class NamespaceLayer:
    name = "namespaces"

    def __init__(self, config: SandboxConfig) -> None:
        self._config = config
        self.private_tmp: str | None = None  # set once /tmp is the private tmpfs
        self._outside_uid = -1
        self._dropped = False  # root made the mounts, then dropped to uid 65534 for real
        self._no_drop = ""  # why a root worker's child kept uid 0 outside (auto mode only)
        self._covered: list[str] = []

    def apply(self) -> None:
        if not _sys.IS_LINUX:
            raise LayerUnavailable("needs Linux")
        if os.geteuid() == 0:
            problem = _drop_problem(self._config)
            if problem is None:
                _enter_as_root()
                self._mount(owner=NOBODY, covers=_covers(self._config))
                drop_to_nobody()
                self._outside_uid, self._dropped = NOBODY, True
                return
            if self._config.mode == "strict":
                raise LayerUnavailable(
                    f"the worker runs as root and the child cannot drop to uid {NOBODY}: "
                    + problem
                )
            self._no_drop = problem
        problem = _probe(_try_user_namespace)
        if problem is not None:
            raise LayerUnavailable(problem)
        uid = os.geteuid()
        _enter_user_namespace()
        self._outside_uid = uid
        self._mount(owner=None, covers=[])

    def _mount(self, owner: int | None, covers: list[str]) -> None:
        """The private /tmp, the covers, the read-only code and Python, the scratch quota.

        ``owner`` owns /tmp and the scratch (the uid about to be dropped to, when root mounts).
        """
        cfg = self._config
        hidden = ["/tmp", *covers]
        # Handles on what must stay visible, taken in the new mount namespace (a bind mount's
        # source must belong to it) and before anything is hidden.
        code_fd = open_dir(cfg.code_dir) if cfg.code_dir is not None else None
        keep = outermost(p for p in runtime_dirs() if any(is_beneath(p, h) for h in hidden))
        kept: list[tuple[str, int]] = []
        try:
            for path in keep:
                kept.append((path, open_dir(path)))
            mount_tmpfs("/tmp", cfg.tmp_bytes_max, owner=owner)
            self.private_tmp = "/tmp"
            for cover in covers:
                mount_tmpfs(cover, COVER_BYTES, mode=0o755)
            self._covered = covers
            if cfg.code_dir is not None and code_fd is not None:
                reattach(cfg.code_dir, code_fd)
                bind_read_only(cfg.code_dir, code_fd)
            for path, fd in kept:
                reattach(path, fd)
                bind_read_only(path, fd, executable=True)  # extension modules are mmapped
        finally:
            if code_fd is not None:
                os.close(code_fd)
            for _, fd in kept:
                os.close(fd)
        if cfg.scratch_dir is not None:
            make_dirs(cfg.scratch_dir)
            mount_tmpfs(cfg.scratch_dir, cfg.scratch_bytes_max, owner=owner)
            os.chdir(cfg.scratch_dir)  # the old working directory is the disk under the tmpfs

    def describe(self) -> str:
        cfg = self._config
        parts = ["empty network", f"private /tmp ({fmt_bytes(cfg.tmp_bytes_max)})"]
        if cfg.scratch_dir is not None:
            parts.append(f"scratch quota {fmt_bytes(cfg.scratch_bytes_max)}")
        if cfg.code_dir is not None:
            parts.append("read-only code")
        if self._covered:
            parts.append("hidden " + " ".join(self._covered))
        if self._no_drop:
            parts.append(f"uid {NOBODY} (uid 0 outside: no real drop, {self._no_drop})")
        elif self._dropped:
            parts.append(f"uid {NOBODY} (uid {NOBODY} outside, dropped from root)")
        elif self._outside_uid >= 0:
            parts.append(f"uid {NOBODY} (uid {self._outside_uid} outside)")
        else:
            parts.append(f"uid {NOBODY}")
        line = "namespaces: " + ", ".join(parts)
        if len(line) > DESCRIBE_CHARS_MAX:
            line = line[: DESCRIBE_CHARS_MAX - 3] + "..."
        return line


def drop_to_nobody() -> None:
    """As root: become uid and gid 65534 for good. Raises if anything of root is left."""
    _drop_bounding_set()  # while CAP_SETPCAP is still ours
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    _sys.prctl(_sys.PR_SET_NO_NEW_PRIVS, 1)  # a set-user-ID-root program runs as nobody too
    _sys.prctl(_sys.PR_SET_DUMPABLE, 0)  # whatever fs.suid_dumpable says
    nobody = (NOBODY, NOBODY, NOBODY)
    ids = (os.getresuid(), os.getresgid(), os.getgroups())
    if ids != (nobody, nobody, []):
        raise RuntimeError(f"after the drop to uid {NOBODY}, (resuid, resgid, groups) is {ids}")
    left = {f: m for f in ("CapEff", "CapPrm") if (m := _sys.capability_mask(f))}
    if left:
        raise RuntimeError(f"after the drop to uid {NOBODY}, capabilities are left: {left}")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise RuntimeError(f"setuid(0) still works after the drop to uid {NOBODY}")


def _enter_as_root() -> None:
    """unshare the network and mount namespaces (no user namespace), make every mount private."""
    try:
        _sys.unshare(_sys.CLONE_NEWNET | _sys.CLONE_NEWNS)
    except OSError as exc:
        why = f"unshare(CLONE_NEWNET|CLONE_NEWNS) as root failed: {exc.strerror}"
        raise _Refused(why) from None
    _sys.mount(None, "/", None, _sys.MS_REC | _sys.MS_PRIVATE)


def _enter_user_namespace() -> None:
    """unshare, map nobody to our own ids, make every mount private."""
    uid, gid = os.geteuid(), os.getegid()
    try:
        _sys.unshare(_sys.CLONE_NEWUSER | _sys.CLONE_NEWNET | _sys.CLONE_NEWNS)
    except OSError as exc:
        raise _Refused(_why_no_userns(exc)) from None
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{NOBODY} {uid} 1\n")
    _write("/proc/self/gid_map", f"{NOBODY} {gid} 1\n")
    _sys.mount(None, "/", None, _sys.MS_REC | _sys.MS_PRIVATE)


def _covers(config: SandboxConfig) -> list[str]:
    """The outermost directories uid 65534 cannot search that lead to what the child needs
    (outside /tmp, which is replaced anyway): each gets a tmpfs, what it leads to is kept."""
    needed = [*runtime_dirs(), config.code_dir, config.scratch_dir]
    blockers = [
        blocker
        for path in needed
        if path is not None and not is_beneath(path, "/tmp")
        and (blocker := search_blocker(path, NOBODY)) is not None
    ]
    return outermost(blockers)


def _drop_problem(config: SandboxConfig) -> str | None:
    """Why a root worker's child could not drop to uid 65534 and keep working, or ``None``."""
    needed = [*runtime_dirs(), *([config.code_dir] if config.code_dir else [])]
    for path in needed:
        st = os.stat(path)
        if not allows(st, NOBODY, READ_SEARCH):
            return (
                f"uid {NOBODY} may not read {path} (mode {st.st_mode & 0o7777:04o}); "
                f"chmod o+rx it or run tn-worker as another user"
            )
    if "/" in _covers(config):
        return f"uid {NOBODY} may not search /"
    return _probe(_try_as_root)


def _try_as_root() -> None:
    _enter_as_root()
    mount_tmpfs("/tmp", _PROBE_TMP_BYTES, owner=NOBODY)
    drop_to_nobody()


def _try_user_namespace() -> None:
    _enter_user_namespace()
    mount_tmpfs("/tmp", _PROBE_TMP_BYTES)


class _Refused(Exception):
    """The namespaces could not be created at all."""


def _probe(steps: Callable[[], None]) -> str | None:
    """Take ``steps`` in a throwaway forked process: ``None`` if they all work, else why not.

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
            steps()
        except _Refused as exc:
            os.write(write_fd, str(exc).encode())
            code = 1
        except BaseException as exc:
            os.write(write_fd, f"the namespaces work, but {exc}".encode())
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

    def __init__(self) -> None:
        self._bounding = -1

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
        self._bounding = _sys.capability_mask("CapBnd")

    def describe(self) -> str:
        bounding = "bounding set " + ("empty" if self._bounding == 0 else "kept: no CAP_SETPCAP")
        return f"capabilities: none ({bounding}, no_new_privs)"


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
