"""The ``landlock`` layer: the files customer code may touch, and (ABI 4+) no TCP, (ABI 6+) no
signals or abstract unix sockets outside the sandbox.

Reads are allowed beneath the Python installation the child runs on (prefixes, stdlib,
site-packages and every other directory on ``sys.path`` except the project root), the
project's own ``client`` package, the system's shared-library directories (so extension modules
can still be loaded), a few harmless files (``/etc/ld.so.cache``, time zones, ``/dev/urandom``,
the CPU list, the process's own ``/proc/self``), and the task's code directory. Writes are
allowed only beneath the scratch directory and the private /tmp. Everything else, including
``/etc/passwd``, other processes' ``/proc`` entries and the worker's own files, answers EACCES.
Nothing may be executed.

Rules bind to the directories as they are when the layer is applied, so this layer comes after
the namespaces layer has mounted the scratch tmpfs and the private /tmp.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import client
from client.sandbox import _sys
from client.sandbox.base import LayerUnavailable, SandboxConfig

_SYS_CREATE_RULESET = 444  # the same number on every architecture
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

# LANDLOCK_ACCESS_FS_*
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # rights a file rule may hold
# LANDLOCK_ACCESS_NET_* (ABI 4) and LANDLOCK_SCOPE_* (ABI 6)
_NET_BIND_TCP = 1 << 0
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
_SCOPE_SIGNAL = 1 << 1

READ = READ_FILE | READ_DIR
WRITE = (
    READ
    | WRITE_FILE
    | REMOVE_DIR
    | REMOVE_FILE
    | MAKE_DIR
    | MAKE_REG
    | MAKE_FIFO
    | MAKE_SYM
    | REFER
    | TRUNCATE
)

# Outside Python itself, what reading customer code legitimately needs.
_SYSTEM_READ = (
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/usr/share/zoneinfo",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
    "/sys/devices/system/cpu",
    "/proc/self",  # this process only (libraries read its status and maps); not other pids
)
_DEV_NULL = "/dev/null"


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi_version() -> int:
    """The kernel's Landlock ABI; raises ``LayerUnavailable`` if there is none."""
    if not _sys.IS_LINUX:
        raise LayerUnavailable("needs Linux")
    try:
        return _sys.syscall(_SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION)
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            raise LayerUnavailable("the kernel has no Landlock (needs Linux 5.13+)") from None
        if exc.errno == errno.EOPNOTSUPP:
            raise LayerUnavailable(
                "Landlock is built in but disabled: add landlock to the kernel's lsm= boot "
                "parameter"
            ) from None
        raise LayerUnavailable(f"Landlock could not be queried: {exc.strerror}") from None


class LandlockLayer:
    name = "landlock"

    def __init__(self, config: SandboxConfig, private_tmp: Callable[[], str | None]) -> None:
        self._config = config
        self._private_tmp = private_tmp
        self._abi = 0
        self._writable: list[str] = []

    def apply(self) -> None:
        abi = abi_version()
        handled_fs = _FS_BY_ABI[max(k for k in _FS_BY_ABI if k <= abi)]
        attr = _RulesetAttr(handled_fs, 0, 0)
        size = 8
        if abi >= 4:
            attr.handled_access_net = _NET_BIND_TCP | _NET_CONNECT_TCP
            size = 16
        if abi >= 6:
            attr.scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL
            size = 24
        ruleset = _sys.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), size, 0)
        try:
            for path, access in self._rules():
                _add_path_rule(ruleset, path, access & handled_fs)
            _sys.prctl(_sys.PR_SET_NO_NEW_PRIVS, 1)
            _sys.syscall(_SYS_RESTRICT_SELF, ruleset, 0)
        finally:
            os.close(ruleset)
        self._abi = abi

    def _rules(self) -> list[tuple[str, int]]:
        cfg = self._config
        rules = [(path, READ) for path in read_paths()]
        if cfg.code_dir is not None:
            rules.append((cfg.code_dir, READ))
        rules.append((_DEV_NULL, READ_FILE | WRITE_FILE))
        self._writable = [p for p in (cfg.scratch_dir, self._private_tmp()) if p is not None]
        rules += [(path, WRITE) for path in self._writable]
        return rules

    def describe(self) -> str:
        extra = []
        if self._abi >= 4:
            extra.append("no TCP bind/connect")
        if self._abi >= 6:
            extra.append("no signals or abstract sockets outside")
        names = ["scratch" if p == self._config.scratch_dir else p for p in self._writable]
        writes = " and ".join(names) or "nothing"
        return (
            f"landlock: ABI {self._abi}, read python+code only, write {writes}"
            + "".join(f", {e}" for e in extra)
        )


def read_paths() -> list[str]:
    """Directories (and files) beneath which the child may read, besides its code directory."""
    client_dir = Path(client.__file__).resolve().parent
    project_root = client_dir.parent
    candidates = [
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        os.path.dirname(os.__file__),  # the stdlib
        *sys.path,  # lib-dynload, site-packages and whatever .pth files added
    ]
    out: list[str] = [str(client_dir)]
    for raw in candidates:
        if not raw or not os.path.isabs(raw):
            continue
        path = Path(raw).resolve()
        # Never "/" or a directory holding the project: that would open the worker's own files.
        if path == Path("/") or path == project_root or path in project_root.parents:
            continue
        if os.path.exists(path) and str(path) not in out:
            out.append(str(path))
    out += [p for p in _SYSTEM_READ if os.path.exists(p)]
    return out


def _add_path_rule(ruleset: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # gone or unreachable: nothing to allow
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= _FILE_ONLY
        rule = _PathBeneathAttr(access, fd)
        _sys.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0)
    finally:
        os.close(fd)
