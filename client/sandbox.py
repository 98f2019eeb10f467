"""Sandbox layers applied inside a worker child before any customer code runs.

A sandbox is an ordered list of layers. Each layer narrows what the process may do and can
describe what it has made active. Today there is one layer, ``rlimit`` (``setrlimit`` caps on
address space, open files, file size, CPU time and core dumps). Seccomp, Landlock and namespace
layers can be added later by writing another class with the same two methods and listing it in
``build_layers``; nothing else needs to change.

Limits are lowered for both the soft and the hard value, so customer code cannot raise them
back. A limit that the process already has lower than requested is left alone (never raised).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Layer",
    "RlimitLayer",
    "SandboxLimits",
    "apply_sandbox",
    "build_layers",
    "describe_layers",
]

# Extra CPU seconds between SIGXCPU (soft limit) and SIGKILL (hard limit), so a child that runs
# into the backstop normally dies by SIGXCPU and the parent can name the cause.
_CPU_GRACE_S = 2


@dataclass(frozen=True)
class SandboxLimits:
    """Per-process resource caps. Units are in the names."""

    memory_bytes: int
    open_files: int
    file_size_bytes: int
    cpu_seconds: int

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "open_files", "file_size_bytes", "cpu_seconds"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"SandboxLimits.{name} must be a positive int, got {value!r}")


class Layer(Protocol):
    """One sandbox layer. ``apply`` is called once, in the process being confined."""

    name: str

    def apply(self) -> None: ...

    def describe(self) -> str: ...


class RlimitLayer:
    """Caps from ``setrlimit``: RLIMIT_AS, RLIMIT_NOFILE, RLIMIT_FSIZE, RLIMIT_CPU, RLIMIT_CORE."""

    name = "rlimit"

    def __init__(self, limits: SandboxLimits) -> None:
        self._caps: list[tuple[int, int, int]] = [
            # (resource, soft, hard)
            (resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes),
            (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
            (resource.RLIMIT_FSIZE, limits.file_size_bytes, limits.file_size_bytes),
            (resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + _CPU_GRACE_S),
            (resource.RLIMIT_CORE, 0, 0),
        ]

    def apply(self) -> None:
        for res, soft, hard in self._caps:
            _lower_limit(res, soft, hard)

    def describe(self) -> str:
        return describe_rlimits()


def _lower_limit(res: int, soft: int, hard: int) -> None:
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


def _fmt_bytes(n: int) -> str:
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
        f"rlimit: address space {_fmt_bytes(as_soft)}, open files {_fmt_count(nofile)}, "
        f"file size {_fmt_bytes(fsize)}, cpu {_fmt_count(cpu, ' s')}, "
        f"core dumps {_fmt_bytes(core)}"
    )


def build_layers(limits: SandboxLimits) -> list[Layer]:
    """The layers to apply, in order. Add future layers (seccomp, Landlock, namespaces) here."""
    return [RlimitLayer(limits)]


_applied: list[Layer] = []


def apply_sandbox(limits: SandboxLimits) -> list[str]:
    """Apply every layer to the calling process; return ``describe_layers()``.

    Raises ``RuntimeError`` naming the layer if one cannot be applied: the caller must not run
    customer code in that case.
    """
    for layer in build_layers(limits):
        try:
            layer.apply()
        except Exception as exc:
            raise RuntimeError(f"sandbox layer {layer.name!r} failed: {exc}") from exc
        _applied.append(layer)
    return describe_layers()


def describe_layers() -> list[str]:
    """One line per active layer in this process.

    In a process where ``apply_sandbox`` has run, that is every applied layer. Elsewhere (for
    example the worker's parent process) it reports the current rlimits, which is what a child
    would inherit before its own layers are applied.
    """
    if _applied:
        return [layer.describe() for layer in _applied]
    return [describe_rlimits() + " (inherited; no sandbox applied in this process)"]
