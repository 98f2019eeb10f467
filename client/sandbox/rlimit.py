"""Resource-limit layers: ``rlimit`` (memory, files, file size, core dumps) and ``cpu-cap``.

Limits are lowered for both the soft and the hard value, so customer code cannot raise them
back (the ``capabilities`` layer also drops CAP_SYS_RESOURCE). A limit that the process already
has lower than requested is left alone (never raised).

``cpu-cap`` is a backstop only. RLIMIT_CPU counts a process's whole life, so in a long-lived
child it cannot be a per-chunk limit: the parent's wall-clock deadline is that. The cap stops a
child that somehow outlives its parent's control, and the runner replaces a child well before
it has used the cap up (see ``CPU_RECYCLE_FRACTION``) so honest chunks never run into it.
RLIMIT_NPROC is not used: it does nothing for root, and seccomp forbids new processes anyway.
"""

from __future__ import annotations

import resource

from client.sandbox.base import SandboxConfig

# Extra CPU seconds between SIGXCPU (soft limit) and SIGKILL (hard limit), so a child that runs
# into the backstop normally dies by SIGXCPU and the parent can name the cause.
CPU_GRACE_S = 2
# The runner replaces a child once it has used this fraction of its CPU backstop.
CPU_RECYCLE_FRACTION = 0.5


class RlimitLayer:
    """Caps from ``setrlimit``: RLIMIT_AS, RLIMIT_NOFILE, RLIMIT_FSIZE, RLIMIT_CORE."""

    name = "rlimit"

    def __init__(self, config: SandboxConfig) -> None:
        limits = config.limits
        self._caps: list[tuple[int, int, int]] = [
            # (resource, soft, hard)
            (resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes),
            (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
            (resource.RLIMIT_FSIZE, limits.file_size_bytes, limits.file_size_bytes),
            (resource.RLIMIT_CORE, 0, 0),
        ]

    def apply(self) -> None:
        for res, soft, hard in self._caps:
            lower_limit(res, soft, hard)

    def describe(self) -> str:
        as_soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        fsize = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        core = resource.getrlimit(resource.RLIMIT_CORE)[0]
        return (
            f"rlimit: address space {fmt_bytes(as_soft)}, open files {_fmt_count(nofile)}, "
            f"file size {fmt_bytes(fsize)}, core dumps {fmt_bytes(core)}"
        )


class CpuCapLayer:
    """RLIMIT_CPU over the child's life: SIGXCPU at the cap, SIGKILL ``CPU_GRACE_S`` later."""

    name = "cpu-cap"

    def __init__(self, config: SandboxConfig) -> None:
        self._seconds = config.limits.cpu_seconds

    def apply(self) -> None:
        lower_limit(resource.RLIMIT_CPU, self._seconds, self._seconds + CPU_GRACE_S)

    def describe(self) -> str:
        soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        if soft == resource.RLIM_INFINITY:
            return "cpu-cap: none"
        kill_at = _fmt_count(hard, " s")
        return (
            f"cpu-cap: {soft} s of CPU per child, then SIGXCPU (SIGKILL at {kill_at}); "
            f"the runner replaces a child after {int(soft * CPU_RECYCLE_FRACTION)} s"
        )


def lower_limit(res: int, soft: int, hard: int) -> None:
    cur_soft, cur_hard = resource.getrlimit(res)
    new_hard = hard if cur_hard == resource.RLIM_INFINITY else min(hard, cur_hard)
    new_soft = min(soft, new_hard)
    if cur_soft != resource.RLIM_INFINITY:
        new_soft = min(new_soft, cur_soft)
    try:
        resource.setrlimit(res, (new_soft, new_hard))
    except (ValueError, OSError) as exc:
        raise RuntimeError(
            f"could not set resource limit {res} to soft={new_soft} hard={new_hard}: {exc}; "
            "check that the worker is not running under a stricter outer limit"
        ) from exc


def fmt_bytes(n: int) -> str:
    if n == resource.RLIM_INFINITY:
        return "unlimited"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def _fmt_count(n: int, unit: str = "") -> str:
    if n == resource.RLIM_INFINITY:
        return "unlimited"
    return f"{n}{unit}"


def describe_rlimits() -> str:
    """The rlimit caps active in this process right now (soft values)."""
    as_soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    fsize = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    cpu = resource.getrlimit(resource.RLIMIT_CPU)[0]
    core = resource.getrlimit(resource.RLIMIT_CORE)[0]
    return (
        f"rlimit: address space {fmt_bytes(as_soft)}, open files {_fmt_count(nofile)}, "
        f"file size {fmt_bytes(fsize)}, cpu {_fmt_count(cpu, ' s')}, "
        f"core dumps {fmt_bytes(core)}"
    )
