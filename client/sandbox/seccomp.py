"""The ``seccomp`` layer: a system-call filter that answers EPERM, so customer code gets a plain
``PermissionError`` and the process (and the worker) keeps running.

Denied: every socket (``socketpair(AF_UNIX)`` excepted: asyncio's event loop needs one, and a
socket pair reaches nothing outside the process), connect/bind/listen/accept, execve and
execveat, fork, vfork and any clone without CLONE_THREAD or with a namespace flag (threads keep
working), ptrace and reading other processes' memory, mounts, unshare and setns, signals to any
process but this one, clearing the parent-death signal, io_uring (it performs I/O without
system calls the filter could see), bpf, perf_event_open, userfaultfd, keyrings, kernel
modules, reboot, clocks and the like.
clone3 answers ENOSYS so the C library falls back to clone, whose flags the filter can read.

The filter is built with libseccomp through ``pyseccomp`` (a ctypes binding: no compiler, one
small pure-Python file), which knows each architecture's syscall numbers and checks the
architecture, so a 32-bit system call cannot slip past a 64-bit filter. It is installed last,
after the layers that need mount and unshare.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import signal
import socket
from collections.abc import Iterator
from typing import Any

from client.sandbox import _sys
from client.sandbox.base import LayerUnavailable

DENIED = (
    # network
    "socket", "connect", "bind", "listen", "accept", "accept4",
    # new programs and processes (clone is handled by argument below)
    "execve", "execveat", "fork", "vfork",
    # other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "process_mrelease",
    "kcmp", "pidfd_open", "pidfd_getfd", "pidfd_send_signal", "tkill",
    # mounts and namespaces
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "fsopen", "fsconfig",
    "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    # the machine
    "reboot", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "swapon", "swapoff", "acct", "quotactl", "settimeofday", "clock_settime", "clock_adjtime",
    "adjtimex", "sethostname", "setdomainname", "syslog", "iopl", "ioperm", "vhangup", "uselib",
    # kernel attack surface
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "open_by_handle_at", "name_to_handle_at", "fanotify_init", "lookup_dcookie",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
)  # fmt: skip
# Signals: allowed only when aimed at this process (first argument is our pid).
SELF_ONLY = ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")
_NAMESPACE_FLAGS = (
    _sys.CLONE_NEWNS, _sys.CLONE_NEWCGROUP, _sys.CLONE_NEWUTS, _sys.CLONE_NEWIPC,
    _sys.CLONE_NEWUSER, _sys.CLONE_NEWPID, _sys.CLONE_NEWNET, _sys.CLONE_NEWTIME,
)  # fmt: skip
_NR_SCMP_ERROR = -1


_SONAMES = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}


@contextlib.contextmanager
def _known_sonames() -> Iterator[None]:
    """Let pyseccomp's import find libc and libseccomp by soname.

    ``ctypes.util.find_library`` runs ``ldconfig -p`` in a subprocess for each name, which
    costs about 17 ms of every child's start; loading the usual sonames directly is enough
    where they exist, and the original lookup still runs where they do not.
    """
    original = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        soname = _SONAMES.get(name)
        if soname is not None:
            try:
                ctypes.CDLL(soname)
            except OSError:
                pass
            else:
                return soname
        return original(name)

    ctypes.util.find_library = find_library
    try:
        yield
    finally:
        ctypes.util.find_library = original


def _load_pyseccomp() -> Any:
    if not _sys.IS_LINUX:
        raise LayerUnavailable("needs Linux")
    try:
        _sys.prctl(_sys.PR_GET_SECCOMP)
    except OSError as exc:
        raise LayerUnavailable(f"the kernel has no seccomp ({exc.strerror})") from None
    try:
        with _known_sonames():
            import pyseccomp  # type: ignore[import-untyped]
    except ImportError:
        raise LayerUnavailable("the pyseccomp package is not installed") from None
    except (RuntimeError, OSError) as exc:  # raised when libseccomp.so.2 cannot be loaded
        raise LayerUnavailable(f"libseccomp is unusable ({exc}); install libseccomp2") from None
    return pyseccomp


class SeccompLayer:
    name = "seccomp"

    def __init__(self) -> None:
        self._rules = 0
        self._unknown: list[str] = []
        # Loaded now, before any layer applies: finding libseccomp runs ldconfig, which the
        # Landlock layer would forbid.
        try:
            self._pyseccomp: Any = _load_pyseccomp()
            self._unavailable: str | None = None
        except LayerUnavailable as exc:
            self._pyseccomp, self._unavailable = None, str(exc)

    def apply(self) -> None:
        if self._unavailable is not None:
            raise LayerUnavailable(self._unavailable)
        sc = self._pyseccomp
        f = sc.SyscallFilter(defaction=sc.ALLOW)
        f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
        f.set_attr(sc.Attr.CTL_TSYNC, 1)  # every thread, should there be any
        eperm = sc.ERRNO(errno.EPERM)
        pid = os.getpid()

        def rule(action: int, name: str, *args: Any) -> None:
            number = sc.resolve_syscall(sc.Arch.NATIVE, name)
            if number == _NR_SCMP_ERROR:
                self._unknown.append(name)  # this libseccomp (or architecture) lacks it
                return
            f.add_rule(action, number, *args)
            self._rules += 1

        for name in DENIED:
            rule(eperm, name)
        for name in SELF_ONLY:
            rule(eperm, name, sc.Arg(0, sc.NE, pid))
        rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, _sys.CLONE_THREAD, 0))
        for flag in _NAMESPACE_FLAGS:
            rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
        rule(sc.ERRNO(errno.ENOSYS), "clone3")
        rule(eperm, "socketpair", sc.Arg(0, sc.NE, socket.AF_UNIX))
        # The parent-death signal may be set to SIGKILL (the child does) but never cleared, so
        # customer code cannot outlive the worker.
        rule(
            eperm,
            "prctl",
            sc.Arg(0, sc.EQ, _sys.PR_SET_PDEATHSIG),
            sc.Arg(1, sc.NE, signal.SIGKILL),
        )
        f.load()

    def describe(self) -> str:
        unknown = f"; not in libseccomp: {len(self._unknown)}" if self._unknown else ""
        return (
            f"seccomp: {self._rules} rules, EPERM for sockets (AF_UNIX pairs only), exec, "
            f"fork (threads ok), ptrace, mount, namespaces, signals to others, io_uring, "
            f"bpf{unknown}"
        )
