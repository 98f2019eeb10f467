"""What every sandbox layer shares: the configuration, the layer protocol, the errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

# Every layer, in the order it is applied (see client/sandbox/__init__.py for why).
LAYER_NAMES = ("rlimit", "cpu-cap", "namespaces", "capabilities", "landlock", "seccomp")
# The layers ``--sandbox strict`` insists on (for a root worker, namespaces includes the uid drop).
STRICT_LAYERS = ("namespaces", "landlock", "seccomp")
MODES = ("auto", "strict")


class LayerUnavailable(Exception):
    """This machine does not offer the layer. Raised before the layer changed anything."""


class SandboxError(RuntimeError):
    """The sandbox could not be set up as asked: customer code must not run."""


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


@dataclass(frozen=True)
class SandboxConfig:
    """Everything the layers need. Paths are absolute, as the confined process sees them.

    ``scratch_dir`` becomes the only writable directory (a private tmpfs of
    ``scratch_bytes_max`` when the namespaces layer is active) and ``code_dir`` a read-only one.
    ``skip`` names layers to leave out (tests and diagnosis); ``mode`` ``strict`` refuses to
    run without every layer in ``STRICT_LAYERS``.
    """

    limits: SandboxLimits
    scratch_dir: str | None = None
    code_dir: str | None = None
    scratch_bytes_max: int = 256 << 20
    tmp_bytes_max: int = 64 << 20
    mode: str = "auto"
    skip: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"sandbox mode must be one of {MODES}, got {self.mode!r}")
        unknown = set(self.skip) - set(LAYER_NAMES)
        if unknown:
            raise ValueError(f"unknown sandbox layers {sorted(unknown)}; known: {LAYER_NAMES}")
        for name in ("scratch_dir", "code_dir"):
            path = getattr(self, name)
            if path is not None and not path.startswith("/"):
                raise ValueError(f"SandboxConfig.{name} must be absolute, got {path!r}")


class Layer(Protocol):
    """One sandbox layer. ``apply`` is called once, in the process being confined.

    ``apply`` raises ``LayerUnavailable`` (having changed nothing) when the machine does not
    offer the layer; any other exception means the process is in an unknown state.
    """

    name: str

    def apply(self) -> None: ...

    def describe(self) -> str: ...


def layer_name(entry: str) -> str:
    """The layer name at the start of a ``"name: ..."`` description or missing entry."""
    return entry.split(":", 1)[0].strip()


def strict_problem(missing: list[str]) -> str | None:
    """Why ``--sandbox strict`` must refuse, given the missing entries; ``None`` if it may run."""
    lacking = [entry for entry in missing if layer_name(entry) in STRICT_LAYERS]
    if not lacking:
        return None
    return (
        f"--sandbox strict needs the {', '.join(STRICT_LAYERS)} layers, but "
        f"{len(lacking)} {'is' if len(lacking) == 1 else 'are'} missing: " + "; ".join(lacking)
    )
