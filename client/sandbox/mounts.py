"""Mount steps of the ``namespaces`` layer, taken in the child's own mount namespace.

A fresh tmpfs mounted on a directory hides everything below it. The layer puts one on /tmp (the
child's private /tmp) and, when the child is about to drop from root to uid 65534, one on each
outermost directory that uid could not search but that leads to something the child needs: a
Python installed under root's 0700 home, say. What the child needs beneath a hidden directory
(the Python installation, the ``client`` package, the code directory) is bind-mounted back at
the same path, read-only, so every path the parent handed over and every ``sys.path`` entry
still works, and nothing else there is visible.

Permission checks here read mode bits only (owner, group, other), not ACLs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from client.sandbox import _sys

TMPFS_FLAGS = _sys.MS_NOSUID | _sys.MS_NODEV | _sys.MS_NOEXEC
COVER_BYTES = 1 << 20  # a covering tmpfs holds only the directories leading to what it keeps
_INODE_BYTES = 16 << 10  # one tmpfs inode per this many bytes of quota (at least 1024)
READ_SEARCH = 0o5  # as the "other" triple of a mode
SEARCH = 0o1


def tmpfs_options(size_bytes: int, mode: int = 0o700, owner: int | None = None) -> str:
    """tmpfs mount data; ``owner`` (a uid, used as the gid too) owns the tmpfs's root."""
    inodes = max(1024, size_bytes // _INODE_BYTES)
    options = f"size={size_bytes},nr_inodes={inodes},mode={mode:04o}"
    if owner is not None:
        options += f",uid={owner},gid={owner}"
    return options


def mount_tmpfs(path: str, size_bytes: int, mode: int = 0o700, owner: int | None = None) -> None:
    _sys.mount("tmpfs", path, "tmpfs", TMPFS_FLAGS, tmpfs_options(size_bytes, mode, owner))


def open_dir(path: str) -> int:
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def same_dir(path: str, fd: int) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    ref = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (ref.st_dev, ref.st_ino)


def is_beneath(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def outermost(paths: Iterable[str]) -> list[str]:
    """``paths`` without those beneath another one, shortest first."""
    keep: list[str] = []
    for path in sorted(set(paths), key=len):
        if not any(is_beneath(path, k) for k in keep):
            keep.append(path)
    return keep


def runtime_dirs() -> list[str]:
    """The directories Python needs: its prefixes, the stdlib, ``sys.path`` entries and the
    ``client`` package; never the project root or above (that would be a whole checkout)."""
    import client

    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                  os.path.dirname(os.__file__), os.path.dirname(client.__file__),
                  *[p for p in sys.path if p and os.path.isabs(p)]]
    project = os.path.dirname(os.path.dirname(os.path.realpath(client.__file__)))
    found: set[str] = set()
    for raw in candidates:
        path = os.path.realpath(raw)
        if os.path.isdir(path) and not is_beneath(project, path):
            found.add(path)
    return sorted(found)


def allows(st: os.stat_result, uid: int, bits: int) -> bool:
    """Whether ``uid`` (with gid ``uid`` and no other groups) has ``bits`` (written as the
    "other" triple: 0o4 read, 0o1 search) on what ``st`` describes."""
    shift = 6 if st.st_uid == uid else 3 if st.st_gid == uid else 0
    return (st.st_mode >> shift) & bits == bits


def search_blocker(path: str, uid: int) -> str | None:
    """The outermost directory above ``path`` that ``uid`` may not search, or ``None``."""
    above: list[str] = []
    head = os.path.dirname(path)
    while head not in above:
        above.append(head)
        head = os.path.dirname(head)
    for directory in reversed(above):  # from "/" down
        try:
            st = os.stat(directory)
        except OSError:
            return None  # the path does not exist: nothing of it to keep
        if not allows(st, uid, SEARCH):
            return directory
    return None


def make_dirs(path: str, mode: int = 0o755) -> None:
    """Create ``path`` and its missing parents with exactly ``mode``, whatever the umask."""
    if os.path.isdir(path):
        return
    make_dirs(os.path.dirname(path), mode)
    os.mkdir(path, mode)
    os.chmod(path, mode)


def reattach(path: str, fd: int) -> None:
    """Make ``path`` name the directory ``fd`` refers to again (after a tmpfs hid it)."""
    if same_dir(path, fd):
        return
    make_dirs(path)
    _sys.mount(f"/proc/self/fd/{fd}", path, None, _sys.MS_BIND)


def bind_read_only(path: str, fd: int, executable: bool = False) -> None:
    """Bind ``path`` onto itself (unless it is a mount already) and make it read-only.

    ``executable`` keeps shared libraries loadable (a Python installation needs that). Flags a
    user namespace inherited locked (nosuid, nodev, noexec, the atime mode) are kept in the
    remount, or the kernel refuses it.
    """
    if same_dir(path, fd) and not os.path.ismount(path):
        _sys.mount(f"/proc/self/fd/{fd}", path, None, _sys.MS_BIND)
    flags = _sys.MS_BIND | _sys.MS_REMOUNT | _sys.MS_RDONLY | _sys.MS_NOSUID | _sys.MS_NODEV
    current = os.statvfs(path).f_flag
    if not executable or current & os.ST_NOEXEC:
        flags |= _sys.MS_NOEXEC
    for st_flag, ms_flag in (
        (os.ST_NOATIME, _sys.MS_NOATIME),
        (os.ST_NODIRATIME, _sys.MS_NODIRATIME),
        (os.ST_RELATIME, _sys.MS_RELATIME),
    ):
        if current & st_flag:
            flags |= ms_flag
    _sys.mount(None, path, None, flags)
