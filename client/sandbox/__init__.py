"""Sandbox layers applied inside a worker child before any customer code runs.

A sandbox is an ordered list of layers. Each narrows what the process may do, is used where the
machine offers it, and describes itself in one line (sent in the worker's hello). A layer the
machine lacks is reported as missing, with the reason. In order:

1. ``rlimit`` (rlimit.py): address space, open files, file size, no core dumps.
2. ``cpu-cap`` (rlimit.py): RLIMIT_CPU over the child's life, a backstop behind the parent's
   per-chunk wall-clock deadline.
3. ``namespaces`` (namespaces.py, mounts.py): new network and mount namespaces: no network at
   all, a private /tmp, a size-capped scratch tmpfs, the code directory read-only; and uid
   nobody (65534). When the worker runs as root that is a real drop, made after the mounts (uid
   65534 outside too; ``strict`` insists on it); otherwise a new user namespace maps 65534 to
   the worker's own uid. First of the confining layers: it needs mount and unshare, which the
   later ones forbid.
4. ``capabilities`` (namespaces.py): every capability dropped, no_new_privs.
5. ``landlock`` (landlock.py): reads only beneath the Python installation and the code
   directory, writes only beneath the scratch directory and /tmp; no TCP; no signals outside.
   After the namespaces layer, because its rules bind to the mounts that layer made.
6. ``seccomp`` (seccomp.py): EPERM for sockets, exec, fork, ptrace, mount, unshare, signals to
   other processes and more; threads keep working. Last, since it forbids what the others use.

``apply_sandbox`` in ``auto`` mode applies what it can; in ``strict`` mode it refuses (raises
``SandboxError``) unless namespaces, Landlock and seccomp are all active. For a root worker the
namespaces layer is only active with the real uid drop: in strict mode a child that cannot drop
reports the layer missing rather than falling back to a nominal uid.
"""

from __future__ import annotations

from client.sandbox.base import (
    LAYER_NAMES,
    MODES,
    STRICT_LAYERS,
    Layer,
    LayerUnavailable,
    SandboxConfig,
    SandboxError,
    SandboxLimits,
    layer_name,
    strict_problem,
)
from client.sandbox.landlock import LandlockLayer
from client.sandbox.namespaces import CapabilitiesLayer, NamespaceLayer
from client.sandbox.rlimit import CpuCapLayer, RlimitLayer, describe_rlimits
from client.sandbox.seccomp import SeccompLayer

__all__ = [
    "LAYER_NAMES",
    "MODES",
    "STRICT_LAYERS",
    "CapabilitiesLayer",
    "CpuCapLayer",
    "LandlockLayer",
    "Layer",
    "LayerUnavailable",
    "NamespaceLayer",
    "RlimitLayer",
    "SandboxConfig",
    "SandboxError",
    "SandboxLimits",
    "SeccompLayer",
    "apply_sandbox",
    "build_layers",
    "describe_layers",
    "describe_rlimits",
    "layer_name",
    "missing_layers",
    "strict_problem",
]


def build_layers(config: SandboxConfig | SandboxLimits) -> list[Layer]:
    """The layers to apply, in order (see the module docstring for why this order)."""
    if isinstance(config, SandboxLimits):
        config = SandboxConfig(config)
    namespaces = NamespaceLayer(config)
    return [
        RlimitLayer(config),
        CpuCapLayer(config),
        namespaces,
        CapabilitiesLayer(),
        LandlockLayer(config, lambda: namespaces.private_tmp),
        SeccompLayer(),
    ]


_applied: list[Layer] = []
_missing: list[str] = []


def apply_sandbox(config: SandboxConfig | SandboxLimits) -> list[str]:
    """Apply every layer to the calling process; return ``describe_layers()``.

    Layers the machine does not offer (or that ``config.skip`` names) are recorded for
    ``missing_layers()``. Raises ``SandboxError`` naming the layer if one fails half-way, and in
    strict mode if a required layer is missing: the caller must not run customer code then.
    Call it while the process has a single thread.
    """
    if isinstance(config, SandboxLimits):
        config = SandboxConfig(config)
    if _applied or _missing:
        raise SandboxError("apply_sandbox() was already called in this process")
    for layer in build_layers(config):
        if layer.name in config.skip:
            _missing.append(f"{layer.name}: left out on purpose (sandbox_skip)")
            continue
        try:
            layer.apply()
        except LayerUnavailable as exc:
            _missing.append(f"{layer.name}: {exc}")
            continue
        except Exception as exc:
            raise SandboxError(f"sandbox layer {layer.name!r} failed: {exc}") from exc
        _applied.append(layer)
    if config.mode == "strict":
        problem = strict_problem(_missing)
        if problem is not None:
            raise SandboxError(problem)
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


def missing_layers() -> list[str]:
    """``"name: why"`` for each layer ``apply_sandbox`` left out in this process."""
    return list(_missing)
