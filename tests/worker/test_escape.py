"""The escape suite: hostile main.py files against real, sandboxed SlotRunner children.

Every attack must fail its chunk with a reason that says what stopped it, and the same runner
must then serve an honest chunk of the same code. The fixture first checks that every sandbox
layer is active (this project's machines offer them all): the attacks on the parent process and
on the machine must never run unconfined, here that would hit the test process itself.

The last tests take the layers one at a time, to show each one holds on its own.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from client.sandbox import LAYER_NAMES
from client.worker.runner import RunnerLimits, SlotRunner, layer_names
from tests.worker.test_runner import Code, fails, run

LIMITS = RunnerLimits(
    memory_bytes=512 << 20,
    file_size_bytes=8 << 20,
    scratch_bytes_max=32 << 20,
    tmp_bytes_max=8 << 20,
)
SECRET = "tn-secret-7f3a9c"  # planted where a worker keeps secrets; must never come back
CONFINED = ("namespaces", "capabilities", "landlock", "seccomp")

HOSTILE = """\
import ctypes, os, socket, subprocess, sys

def process(item):
    if isinstance(item, dict):
        return attack(item)
    return item * 2

def check(result):
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result

def attack(item):
{body}
"""


def hostile(root: Path, name: str, body: str) -> Code:
    return Code(root, name, HOSTILE.format(body=textwrap.indent(textwrap.dedent(body), "    ")))


async def start(limits: RunnerLimits) -> SlotRunner:
    runner = SlotRunner(limits)
    await runner.start()
    return runner


@pytest.fixture
async def runner() -> AsyncIterator[SlotRunner]:
    r = await start(LIMITS)
    try:
        assert layer_names(r.layers) == list(LAYER_NAMES), r.missing_layers
        yield r
    finally:
        await r.close()


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory outside /tmp (which children never see: theirs is private), like the
    worker's cache in its home directory."""
    path = Path(tempfile.mkdtemp(prefix="tn-escape-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP listener on 127.0.0.1 that no sandboxed child may reach."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        s.setblocking(False)
        yield s


def assert_nothing_arrived(listener: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        conn, peer = listener.accept()
        conn.close()
        pytest.fail(f"a sandboxed child connected to the test's listener from {peer}")


async def attack_then_serve(
    runner: SlotRunner, code: Code, item: dict[str, Any], *expected: str, deadline_s: float = 10
) -> str:
    """Run the attack chunk, check its reason, then check the runner serves honest work."""
    err = await fails(runner, code, [item], deadline_s=deadline_s)
    for text in expected:
        assert text in err.reason, err.reason
    assert SECRET not in err.reason
    assert await run(runner, code, [1, 2]) == [2, 4]
    return err.reason


DENIED = "sandbox: denied by the worker's sandbox"

ATTACKS: list[tuple[str, str, tuple[str, ...]]] = [
    ("tcp socket", "socket.socket(socket.AF_INET, socket.SOCK_STREAM)", (
        "PermissionError: [Errno 1] Operation not permitted", DENIED)),
    ("udp to the internet", "socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
     ".sendto(b'x', ('8.8.8.8', 53))", ("Operation not permitted", DENIED)),
    ("unix socket", "socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)",
     ("Operation not permitted", DENIED)),
    ("inet socket pair", "socket.socketpair(socket.AF_INET)", ("PermissionError",)),
    ("subprocess.run", "subprocess.run(['/bin/sh', '-c', 'echo pwned > ' + item['path']])",
     ("PermissionError: [Errno 1] Operation not permitted", DENIED)),
    ("os.system", "os.system('echo pwned > ' + item['path'])",
     ("cannot start programs: the worker's sandbox forbids new processes", DENIED)),
    ("os.execv", "os.execv('/bin/sh', ['sh', '-c', 'echo pwned > ' + item['path']])",
     ("PermissionError: [Errno 1] Operation not permitted", DENIED)),
    ("os.fork", "if os.fork() == 0:\n    open(item['path'], 'w').write('pwned')\n    os._exit(0)",
     ("PermissionError: [Errno 1] Operation not permitted", DENIED)),
    ("multiprocessing", "import multiprocessing as mp\n"
     "p = mp.get_context('fork').Process(target=print)\np.start()\np.join()",
     ("PermissionError", DENIED)),
    ("read /etc/passwd", "return open('/etc/passwd').read()",
     ("Permission denied: '/etc/passwd'", DENIED)),
    ("list /", "return os.listdir('/')", ("Permission denied: '/'", DENIED)),
    ("read the worker's token file", "return open(item['token_file']).read()",
     ("PermissionError: [Errno 13] Permission denied", DENIED)),
    ("read the original code dir", "return open(item['code_file']).read()",
     ("PermissionError: [Errno 13] Permission denied", DENIED)),
    ("token in the environment", "return os.environ['TN_TOKEN']", ("KeyError: 'TN_TOKEN'",)),
    ("parent's environment", "return open(f'/proc/{os.getppid()}/environ').read()",
     ("Permission denied", DENIED)),
    ("parent's command line", "return open(f'/proc/{os.getppid()}/cmdline').read()",
     ("Permission denied", DENIED)),
    ("write outside scratch", "open(item['path'], 'w').write('pwned')",
     ("Permission denied", DENIED)),
    ("write into the code dir", "open(os.path.dirname(__file__) + '/evil.py', 'w').write('x')",
     ("OSError: [Errno 30] Read-only file system", "the code directory is read-only")),
    ("allocate 10 GB", "return len(bytearray(10 << 30))",
     ("MemoryError", "sandbox: out of memory: a worker child may use at most 512 MiB")),
    ("one huge file", "with open('big', 'wb') as f:\n    for _ in range(100):\n"
     "        f.write(bytes(1 << 20))",
     ("OSError: [Errno 27] File too large", "sandbox: a file reached the size limit of 8 MiB")),
    ("fill the scratch disk", "for i in range(100):\n"
     "    open(f'f{i}', 'wb').write(bytes(4 << 20))",
     ("No space left on device", "sandbox: the scratch space is full: 32 MiB")),
    ("fill /tmp", "for i in range(100):\n    open(f'/tmp/f{i}', 'wb').write(bytes(4 << 20))",
     ("No space left on device", "sandbox: the scratch space is full")),
    ("print gigabytes", "line = 'x' * (1 << 20)\nfor _ in range(2048):\n    print(line)",
     ("OSError: [Errno 27] File too large", "printed output counts as a file too")),
    ("kill the parent", "os.kill(os.getppid(), 9)",
     ("PermissionError: [Errno 1] Operation not permitted", DENIED)),
    ("kill every process", "os.kill(-1, 9)", ("Operation not permitted", DENIED)),
    ("tgkill the parent", "libc = ctypes.CDLL(None, use_errno=True)\n"
     "check(libc.syscall(234, os.getppid(), os.getppid(), 9))",
     ("Operation not permitted", DENIED)),
    ("tkill the parent", "libc = ctypes.CDLL(None, use_errno=True)\n"
     "check(libc.syscall(200, os.getppid(), 9))", ("Operation not permitted", DENIED)),
    ("ptrace the parent", "libc = ctypes.CDLL(None, use_errno=True)\n"
     "check(libc.ptrace(16, os.getppid(), 0, 0))", ("Operation not permitted", DENIED)),
    ("new user namespace", "libc = ctypes.CDLL(None, use_errno=True)\n"
     "check(libc.unshare(0x10000000))", ("Operation not permitted", DENIED)),
    ("mount", "libc = ctypes.CDLL(None, use_errno=True)\n"
     "check(libc.mount(b'tmpfs', b'/tmp', b'tmpfs', 0, None))",
     ("Operation not permitted", DENIED)),
    ("io_uring", "libc = ctypes.CDLL(None, use_errno=True)\n"
     "check(libc.syscall(425, 8, ctypes.create_string_buffer(120)))",
     ("Operation not permitted", DENIED)),
    ("clear the parent-death signal", "libc = ctypes.CDLL(None, use_errno=True)\n"
     "check(libc.prctl(1, 0, 0, 0, 0))", ("Operation not permitted", DENIED)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "body", "expected"), ATTACKS, ids=[a[0] for a in ATTACKS])
async def test_attack_fails_its_chunk_and_the_runner_keeps_serving(
    runner: SlotRunner,
    outside: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    body: str,
    expected: tuple[str, ...],
) -> None:
    monkeypatch.setenv("TN_TOKEN", SECRET)  # the worker's environment
    cache = outside / "cache"  # the worker's cache: a token file and the task's code
    cache.mkdir()
    (cache / "token").write_text(SECRET)
    code = hostile(cache, "hostile", body)
    (code.dir / "secret.txt").write_text(SECRET)
    pwned = outside / "pwned"
    item = {
        "path": str(pwned),
        "token_file": str(cache / "token"),
        "code_file": str(code.dir / "secret.txt"),
    }
    await attack_then_serve(runner, code, item, *expected)
    assert not pwned.exists()
    assert sorted(p.name for p in code.dir.iterdir()) == ["main.py", "secret.txt"]


async def test_connect_to_localhost_reaches_nothing(
    runner: SlotRunner, tmp_path: Path, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    code = hostile(tmp_path, "connect", "socket.create_connection(('127.0.0.1', item['port']), 2)")
    await attack_then_serve(runner, code, {"port": port}, "Operation not permitted", DENIED)
    assert_nothing_arrived(listener)


async def test_spinning_forever_hits_the_deadline(runner: SlotRunner, tmp_path: Path) -> None:
    code = hostile(tmp_path, "spin", "while True:\n    pass")
    pid = runner.pid
    await attack_then_serve(
        runner, code, {}, "exceeded the 0.5 s chunk deadline", deadline_s=0.5
    )
    assert runner.pid != pid


async def test_spinning_threads_die_with_the_child(runner: SlotRunner, tmp_path: Path) -> None:
    code = hostile(
        tmp_path,
        "threads",
        """
        import threading
        def spin():
            while True:
                pass
        for _ in range(4):
            threading.Thread(target=spin, daemon=True).start()
        while True:
            pass
        """,
    )
    pid = runner.pid
    await attack_then_serve(runner, code, {}, "chunk deadline", deadline_s=0.5)
    assert pid is not None and not Path(f"/proc/{pid}").exists()


async def test_honest_code_still_works(runner: SlotRunner, tmp_path: Path) -> None:
    code = Code(
        tmp_path,
        "honest",
        """
        import asyncio, concurrent.futures, datetime, decimal, hashlib, json, math, os, re
        import sqlite3, ssl, tempfile, threading, zoneinfo
        import anyio, msgspec
        from pathlib import Path

        HERE = Path(__file__).parent

        def process(item):
            out = {"json": json.loads("[1]"), "sqrt": math.sqrt(16),
                   "sha": hashlib.sha256(b"x").hexdigest()[:8],
                   "re": re.findall(r"\\d", "a1b2"), "dec": str(decimal.Decimal("1.1") * 2),
                   "sorted": sorted([3, 1, 2]), "anyio": anyio.__name__,
                   "msgspec": msgspec.json.encode([1]).decode(),
                   "sqlite": sqlite3.connect(":memory:").execute("select 7").fetchone()[0],
                   "ssl": ssl.OPENSSL_VERSION.split()[0],
                   "tz": str(datetime.datetime(2020, 1, 1,
                                               tzinfo=zoneinfo.ZoneInfo("Europe/Paris")))}
            try:
                import numpy
            except ImportError:
                out["numpy"] = None
            else:
                out["numpy"] = int(numpy.arange(5).sum())
            seen = []
            workers = [threading.Thread(target=seen.append, args=(i,)) for i in range(4)]
            for t in workers:
                t.start()
            for t in workers:
                t.join()
            out["threads"] = sorted(seen)
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                out["pool"] = list(pool.map(abs, [-1, -2, -3]))
            out["asyncio"] = asyncio.run(asyncio.sleep(0, "ok"))
            out["data"] = (HERE / "data" / "table.csv").read_text()
            Path("scratch.txt").write_text("kept")
            out["scratch"] = Path("scratch.txt").read_text()
            with tempfile.NamedTemporaryFile() as f:
                f.write(b"tmp")
                out["tempfile"] = f.name.startswith(os.getcwd())
            Path("/tmp/x").write_text("private")
            out["tmp"] = Path("/tmp/x").read_text()
            out["cpus"] = os.cpu_count() or 0
            return out
        """,
    )
    (code.dir / "data").mkdir()
    (code.dir / "data" / "table.csv").write_text("a,b\n1,2\n")
    (out,) = await run(runner, code, [0])
    numpy = out.pop("numpy")
    assert out == {
        "json": [1], "sqrt": 4.0, "sha": "2d711642", "re": ["1", "2"], "dec": "2.2",
        "sorted": [1, 2, 3], "anyio": "anyio", "msgspec": "[1]", "sqlite": 7, "ssl": "OpenSSL",
        "tz": "2020-01-01 00:00:00+01:00", "threads": [0, 1, 2, 3], "pool": [1, 2, 3],
        "asyncio": "ok", "data": "a,b\n1,2\n", "scratch": "kept", "tempfile": True,
        "tmp": "private", "cpus": out["cpus"],
    }  # fmt: skip
    assert out["cpus"] >= 1
    assert numpy in (None, 10)
    assert not (code.dir / "scratch.txt").exists()


async def test_each_child_has_its_own_scratch(tmp_path: Path) -> None:
    code = Code(
        tmp_path,
        "peek",
        """
        import os
        def process(item):
            if item == "write":
                open("/tmp/mine", "w").write(str(os.getpid()))
                open("mine", "w").write(str(os.getpid()))
                return sorted(os.listdir("."))
            return [os.path.exists("/tmp/mine"), os.path.exists("mine")]
        """,
    )
    a, b = await start(LIMITS), await start(LIMITS)
    try:
        assert await run(a, code, ["write"]) == [["mine"]]
        assert await run(b, code, ["look"]) == [[False, False]]
        assert await run(a, code, ["look"]) == [[True, True]]
    finally:
        await a.close()
        await b.close()


# ---- each layer on its own ----------------------------------------------------------------

ONLY: list[tuple[str, str, str, str]] = [
    ("seccomp", "tcp socket", "socket.socket()", "Operation not permitted"),
    ("seccomp", "subprocess", "subprocess.run(['/bin/true'])", "Operation not permitted"),
    ("seccomp", "kill the parent", "os.kill(os.getppid(), 9)", "Operation not permitted"),
    ("landlock", "read /etc/passwd", "return open('/etc/passwd').read()", "Permission denied"),
    ("landlock", "connect", "socket.create_connection(('127.0.0.1', item['port']), 2)",
     "PermissionError"),
    ("landlock", "exec", "os.execv('/bin/true', ['true'])", "Permission denied"),
    ("landlock", "kill the parent", "os.kill(os.getppid(), 9)", "Operation not permitted"),
    ("namespaces", "connect", "socket.create_connection(('127.0.0.1', item['port']), 2)",
     "Network is unreachable"),
    ("namespaces", "write the code dir", "open(os.path.dirname(__file__) + '/x', 'w')",
     "Read-only file system"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("layer", "name", "body", "expected"), ONLY, ids=[f"{o[0]}-{o[1]}" for o in ONLY]
)
async def test_one_layer_alone_holds(
    tmp_path: Path, listener: socket.socket, layer: str, name: str, body: str, expected: str
) -> None:
    kept = {layer, "capabilities"} if layer == "namespaces" else {layer}
    limits = RunnerLimits(sandbox_skip=frozenset(CONFINED) - kept)
    runner = await start(limits)
    try:
        active = layer_names(runner.layers)
        assert active == ["rlimit", "cpu-cap", *(n for n in CONFINED if n in kept)], active
        if "kill" in name and layer == "landlock":
            assert "no signals" in runner.layers[-1]  # never aim at the parent unprotected
        code = hostile(tmp_path, "alone", body)
        port = listener.getsockname()[1]
        await attack_then_serve(runner, code, {"port": port}, expected)
        assert_nothing_arrived(listener)
    finally:
        await runner.close()



async def test_symlinks_in_the_code_do_not_leak_worker_files(
    runner: SlotRunner, outside: Path
) -> None:
    token = outside / "token"
    token.write_text(SECRET)
    code = hostile(outside, "links", "return open(os.path.dirname(__file__) + item['link']).read()")
    (code.dir / "token-link").symlink_to(token)
    (code.dir / "passwd-link").symlink_to("/etc/passwd")
    for link in ("/token-link", "/passwd-link"):
        err = await fails(runner, code, [{"link": link}])
        assert "PermissionError: [Errno 13] Permission denied" in err.reason, err.reason
        assert SECRET not in err.reason
    assert await run(runner, code, [1]) == [2]
