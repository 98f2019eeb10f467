"""The sandbox as the worker sets it up: layers reported, strict mode, the CPU backstop, cost."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from client.sandbox import LAYER_NAMES, STRICT_LAYERS, SandboxConfig, SandboxLimits
from client.worker import cli
from client.worker import runner as runner_mod
from client.worker.runner import RunnerLimits, SandboxRefused, SlotRunner, layer_names
from tests.worker.test_runner import Code, fails, run

RLIMIT_ONLY = frozenset(LAYER_NAMES) - {"rlimit"}
NAMESPACES_ONLY = frozenset(LAYER_NAMES) - {"rlimit", "cpu-cap", "namespaces"}  # no caps layer
NOBODY = 65534
SECRET = "tn-root-only-5e1b"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the uid drop is for root workers only")


async def test_every_layer_is_active_and_fits_in_the_hello() -> None:
    layers, missing = await runner_mod.probe_sandbox(RunnerLimits())
    assert layer_names(layers) == list(LAYER_NAMES), missing
    assert missing == []
    # schema.worker.Hello.sandbox: at most 32 entries of at most 200 characters
    assert len(layers) <= 32 and all(len(line) <= 200 for line in layers), layers
    landlock = next(line for line in layers if line.startswith("landlock:"))
    assert "no TCP" in landlock and "no signals" in landlock


async def test_left_out_layers_are_reported_missing_with_a_reason() -> None:
    limits = RunnerLimits(sandbox_skip=frozenset({"landlock", "seccomp"}))
    layers, missing = await runner_mod.probe_sandbox(limits)
    assert layer_names(layers) == ["rlimit", "cpu-cap", "namespaces", "capabilities"]
    assert missing == [
        "landlock: left out on purpose (sandbox_skip)",
        "seccomp: left out on purpose (sandbox_skip)",
    ]


async def test_strict_starts_when_every_strong_layer_is_there() -> None:
    layers, _ = await runner_mod.probe_sandbox(RunnerLimits(sandbox="strict"))
    assert set(STRICT_LAYERS) <= set(layer_names(layers))


async def test_strict_refuses_without_a_strong_layer_and_names_it() -> None:
    limits = RunnerLimits(sandbox="strict", sandbox_skip=frozenset({"namespaces", "seccomp"}))
    runner = SlotRunner(limits)
    with pytest.raises(SandboxRefused) as info:
        await runner.start()
    await runner.close()
    message = str(info.value)
    assert "--sandbox strict needs the namespaces, landlock, seccomp layers" in message
    assert "2 are missing: namespaces: left out" in message
    assert "seccomp: left out" in message
    assert "landlock:" not in message.split("missing:", 1)[1]


def test_cli_strict_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_probe = runner_mod.probe_sandbox

    async def probe_without_landlock(
        limits: RunnerLimits, python: str = sys.executable
    ) -> tuple[list[str], list[str]]:
        # as on a kernel without Landlock: the real child, told to leave the layer out
        return await real_probe(dataclasses.replace(limits, sandbox_skip=frozenset({"landlock"})))

    monkeypatch.setattr(runner_mod, "probe_sandbox", probe_without_landlock)
    argv = ["connect", "--token", "t", "--url", "ws://127.0.0.1:9", "--sandbox", "strict"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the worker child refused to start: the sandbox could not be")
    assert "--sandbox strict needs the namespaces, landlock, seccomp layers" in err
    assert "landlock: left out" in err


def test_startup_line_names_active_and_missing_layers() -> None:
    layers = ["rlimit: address space 1 GiB", "seccomp: 80 rules"]
    missing = ["landlock: the kernel has no Landlock (needs Linux 5.13+)"]
    assert cli.sandbox_summary("auto", layers, missing) == (
        "sandbox auto: rlimit, seccomp (missing: landlock: the kernel has no Landlock "
        "(needs Linux 5.13+))"
    )
    assert cli.sandbox_summary("strict", layers, []).endswith("(missing: none)")


def test_config_rejects_unknown_layers_and_modes() -> None:
    limits = SandboxLimits(1 << 30, 64, 1 << 20, 60)
    with pytest.raises(ValueError, match="unknown sandbox layers"):
        SandboxConfig(limits, skip=frozenset({"apparmor"}))
    with pytest.raises(ValueError, match="sandbox mode"):
        SandboxConfig(limits, mode="paranoid")
    with pytest.raises(ValueError, match="sandbox_skip"):
        RunnerLimits(sandbox_skip=frozenset({"selinux"}))
    with pytest.raises(ValueError, match=r"RunnerLimits\.sandbox must"):
        RunnerLimits(sandbox="off")


async def test_cpu_backstop_replaces_a_used_child_and_stops_a_runaway(tmp_path: Path) -> None:
    code = Code(
        tmp_path,
        "burn",
        """
        import time
        def process(seconds):
            start = time.process_time()
            while time.process_time() - start < seconds:
                pass
            return seconds
        """,
    )
    runner = SlotRunner(RunnerLimits(cpu_seconds_backstop=1))
    try:
        await runner.start()
        pid = runner.pid
        assert await run(runner, code, [0.6]) == [0.6]  # over half the backstop: retired
        assert await run(runner, code, [0]) == [0]
        assert runner.pid != pid
        err = await fails(runner, code, [30])  # the wall-clock deadline is 10 s
        assert "killed by SIGXCPU (the child used up its CPU-time backstop of 1 s)" in err.reason
        assert await run(runner, code, [0]) == [0]
    finally:
        await runner.close()


async def test_every_layer_and_rlimit_only_run_the_same_chunk(tmp_path: Path) -> None:
    """The two slots the sandbox benchmark compares (tests/bench/sandbox.py: what the layers
    cost per chunk) hold the layers they say, and answer alike."""
    code = Code(tmp_path, "double", "def process(item):\n    return item * 2\n")
    runners = [SlotRunner(RunnerLimits(sandbox_skip=RLIMIT_ONLY)), SlotRunner(RunnerLimits())]
    try:
        for runner in runners:
            await runner.start()
        assert layer_names(runners[0].layers) == ["rlimit"]
        assert layer_names(runners[1].layers) == list(LAYER_NAMES)
        for runner in runners:
            assert await run(runner, code, [1, 2, 3]) == [2, 4, 6]
    finally:
        for runner in runners:
            await runner.close()


# ---- a root worker's child drops to uid 65534 ----------------------------------------------

IDS = """
import os

def process(item):
    with open("made-here", "w") as f:  # in the scratch directory, the working directory
        f.write("x")
    try:
        os.setuid(0)
        setuid = "worked"
    except OSError as exc:
        setuid = f"{type(exc).__name__} {exc.errno}"
    return {"resuid": os.getresuid(), "resgid": os.getresgid(), "groups": os.getgroups(),
            "scratch": os.getcwd(), "setuid": setuid}
"""


@pytest.fixture
async def namespaces_only() -> AsyncIterator[SlotRunner]:
    """A child with the namespaces layer as its only confinement: no capabilities layer, no
    Landlock, no seccomp (the rlimits confine nothing)."""
    runner = SlotRunner(RunnerLimits(sandbox_skip=NAMESPACES_ONLY))
    await runner.start()
    try:
        assert layer_names(runner.layers) == ["rlimit", "cpu-cap", "namespaces"]
        yield runner
    finally:
        await runner.close()


@pytest.fixture
def worker_files() -> Iterator[Path]:
    """A directory every uid may search, outside /tmp (which children never see), holding a
    root-only 0600 file standing for the worker's token and a 0644 file anyone may read."""
    path = Path(tempfile.mkdtemp(prefix="tn-uid-", dir="/var/tmp"))
    try:
        path.chmod(0o755)
        (path / "token").write_text(SECRET)
        (path / "token").chmod(0o600)
        (path / "public").write_text("public")
        (path / "public").chmod(0o644)
        yield path
    finally:
        shutil.rmtree(path)


@as_root
@pytest.mark.parametrize("skip", [frozenset(), NAMESPACES_ONLY], ids=["all layers", "namespaces"])
async def test_a_root_workers_child_is_uid_65534_inside_and_outside(
    tmp_path: Path, skip: frozenset[str]
) -> None:
    runner = SlotRunner(RunnerLimits(sandbox_skip=skip))
    try:
        await runner.start()
        (out,) = await run(runner, Code(tmp_path, "ids", IDS), [0])
        assert out["resuid"] == out["resgid"] == [NOBODY] * 3, out
        assert out["groups"] == [], out
        assert out["setuid"] == "PermissionError 1", out
        # From outside: the kernel's view of the child and of the file it wrote in its scratch
        # (a tmpfs in the child's own mount namespace, reached through /proc/PID/root).
        status = Path(f"/proc/{runner.pid}/status").read_text()
        assert f"Uid:\t{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}\n" in status, status
        assert f"Gid:\t{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}\n" in status, status
        made = os.stat(f"/proc/{runner.pid}/root{out['scratch']}/made-here")
        assert (made.st_uid, made.st_gid) == (NOBODY, NOBODY)
        namespaces = next(line for line in runner.layers if line.startswith("namespaces:"))
        assert f"uid {NOBODY} (uid {NOBODY} outside, dropped from root)" in namespaces
    finally:
        await runner.close()


@as_root
async def test_with_namespaces_alone_a_root_only_file_stays_closed(
    namespaces_only: SlotRunner, tmp_path: Path, worker_files: Path
) -> None:
    code = Code(tmp_path, "peek", "def process(path):\n    return open(path).read()\n")
    # The directory is reachable, so only the file's mode (root, 0600) stops the second read.
    assert await run(namespaces_only, code, [str(worker_files / "public")]) == ["public"]
    err = await fails(namespaces_only, code, [str(worker_files / "token")])
    assert "PermissionError: [Errno 13] Permission denied" in err.reason, err.reason
    assert SECRET not in err.reason
    assert await run(namespaces_only, code, [str(worker_files / "public")]) == ["public"]


@as_root
async def test_a_root_workers_child_reads_code_the_cache_keeps_private(tmp_path: Path) -> None:
    """Code extracted under a umask of 077 (files 0600, directories 0700) still runs as uid
    65534: the slot's copy is made readable, and the cache's own modes are left alone."""
    code = Code(
        tmp_path,
        "private",
        """
        import pathlib
        import helper
        def process(item):
            return helper.VALUE + (pathlib.Path(__file__).parent / "data" / "x.txt").read_text()
        """,
        helper="VALUE = 'helper+'\n",
    )
    (code.dir / "data").mkdir()
    (code.dir / "data" / "x.txt").write_text("data")
    for path in [code.dir, code.dir / "data"]:
        path.chmod(0o700)
    files = [code.dir / "main.py", code.dir / "helper.py", code.dir / "data" / "x.txt"]
    for path in files:
        path.chmod(0o600)
    runner = SlotRunner(RunnerLimits())
    try:
        await runner.start()
        assert await run(runner, code, [0]) == ["helper+data"]
    finally:
        await runner.close()
    assert [p.stat().st_mode & 0o777 for p in files] == [0o600] * 3
    assert (code.dir / "data").stat().st_mode & 0o777 == 0o700
