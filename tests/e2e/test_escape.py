"""Escape attempts end to end: hostile tasks through a real coordinator and a real
``tn-worker --sandbox strict``. Each attack fails its own chunk with a reason that names what
stopped it; the worker keeps serving the honest chunks around them and the next task."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Cluster, Coordinator, Worker

FAKE_TOKEN = "tn-fake-token-0c1d2e"  # in the worker's environment and its cache dir

HOSTILE = """\
import os, socket, subprocess

def process(item):
    kind = item["attack"]
    if kind == "honest":
        return item["n"] * 2
    if kind == "connect":
        socket.create_connection(("127.0.0.1", item["port"]), 2)
    elif kind == "subprocess":
        subprocess.run(["/bin/sh", "-c", "echo pwned > " + item["path"]])
    elif kind == "passwd":
        return open("/etc/passwd").read()
    elif kind == "token file":
        return open(item["path"]).read()
    elif kind == "token env":
        return os.environ["TN_TOKEN"]
    elif kind == "parent cmdline":
        return open(f"/proc/{os.getppid()}/cmdline").read()
    elif kind == "kill parent":
        os.kill(os.getppid(), 9)
    elif kind == "write outside":
        open(item["path"], "w").write("pwned")
    elif kind == "memory":
        return len(bytearray(10 << 30))
    return "escaped"
"""
DENIED = "denied by the worker's sandbox"
EXPECTED = {
    "connect": ("PermissionError: [Errno 1] Operation not permitted", DENIED),
    "subprocess": ("PermissionError: [Errno 1] Operation not permitted", DENIED),
    "passwd": ("Permission denied: '/etc/passwd'", DENIED),
    "token file": ("PermissionError: [Errno 13] Permission denied", DENIED),
    "token env": ("KeyError: 'TN_TOKEN'",),
    "parent cmdline": ("Permission denied", DENIED),
    "kill parent": ("PermissionError: [Errno 1] Operation not permitted", DENIED),
    "write outside": ("Permission denied", DENIED),
    "memory": ("MemoryError", "out of memory"),
}


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory outside /tmp, where the worker's files would be."""
    path = Path(tempfile.mkdtemp(prefix="tn-escape-e2e-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_hostile_task_fails_chunk_by_chunk_and_the_worker_keeps_serving(
    cluster: Cluster,
    coordinator: Coordinator,
    start_worker: Callable[..., Worker],
    outside: Path,
) -> None:
    cache = outside / "escapee-cache"
    cache.mkdir()
    (cache / "token").write_text(FAKE_TOKEN)
    worker = start_worker(
        "escapee",
        slots=1,
        env={"TN_TOKEN": FAKE_TOKEN},
        extra_args=["--sandbox", "strict", "--cache-dir", str(cache)],
    )
    assert worker.count(
        "sandbox strict: rlimit, cpu-cap, namespaces, capabilities, landlock, seccomp "
        "(missing: none)"
    ) == 1, worker.log_tail()
    assert worker.count("sandbox layers: rlimit: ") == 1, worker.log_tail()

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        paths = {"token file": str(cache / "token"), "subprocess": str(outside / "pwned"),
                 "write outside": str(outside / "pwned")}
        items: list[dict[str, object]] = [{"attack": "honest", "n": 1}]
        for kind in EXPECTED:
            items.append({"attack": kind, "port": listener.getsockname()[1],
                          "path": paths.get(kind, "")})
        items.append({"attack": "honest", "n": 2})
        api = coordinator.api()
        created = api.submit(HOSTILE, items, {"chunk_size": 1, "max_attempts": 1})
        info = api.wait_state(created["id"], timeout_s=60, watch=(worker,))
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing reached the listener

    chunks = api.chunks(created["id"])
    assert info["state"] == "failed", info
    assert (info["chunks_done"], info["chunks_failed"]) == (2, len(EXPECTED)), info
    assert chunks[0]["state"] == chunks[-1]["state"] == "done"
    for kind, chunk in zip(EXPECTED, chunks[1:-1], strict=True):
        assert chunk["state"] == "failed", (kind, chunk)
        for text in EXPECTED[kind]:
            assert text in chunk["error"], (kind, chunk["error"])
        assert FAKE_TOKEN not in chunk["error"] and coordinator.worker_token not in chunk["error"]
    assert not (outside / "pwned").exists()
    assert worker.alive and worker.connections() == 1  # never restarted, never reconnected

    honest = api.submit("def process(x):\n    return x + 1\n", [1, 2, 3], {"chunk_size": 2})
    assert api.wait_state(honest["id"], watch=(worker,))["state"] == "completed"
    assert api.results(honest["id"]) == [2, 3, 4]
    assert os.path.isdir(cache / "code")  # the worker's own cache was usable all along
