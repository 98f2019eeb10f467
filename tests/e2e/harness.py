"""End-to-end harness: a real ``tn-coordinator`` and real ``tn-worker`` processes.

Every process is started through a ``Cluster``, whose ``close`` kills whatever it started
(the fixtures in conftest.py call it at teardown, also when the test failed). Each process
logs to a file. Tests wait on conditions with ``wait_until``; nothing sleeps a fixed time.

Timing: ``FAST_ENV`` shortens the coordinator's clocks so failures are noticed quickly:
heartbeats every 500 ms, a dropped connection's leases wait 300 ms for a resume, the clock
ticks every 100 ms. The silence limit (``TN_LEASE_MS``) is 2000 ms rather than 1000 ms so a
busy 2-core machine does not make a healthy worker look dead (a 1 s limit leaves only 500 ms
of slack over the heartbeat period).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.e2e.rest import Api
from tests.e2e.waiting import wait_until

BIN = Path(sys.executable).parent
HEARTBEAT_MS, LEASE_MS, GRACE_MS, TICK_MS = 500, 2000, 300, 100
FAST_ENV = {
    "TN_HEARTBEAT_MS": str(HEARTBEAT_MS),
    "TN_LEASE_MS": str(LEASE_MS),
    "TN_DISCONNECT_GRACE_MS": str(GRACE_MS),
    "TN_TICK_MS": str(TICK_MS),
}
LOG_TAIL_CHARS = 6000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- processes -------------------------------------------------------------------------


def _clean_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TN_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Proc:
    """One child process whose stdout and stderr go to a log file."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"==== {time.strftime('%H:%M:%S')} start: {' '.join(argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, env=env, cwd=cwd)

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self) -> str:
        text = self.log()
        return text if len(text) <= LOG_TAIL_CHARS else "[...]" + text[-LOG_TAIL_CHARS:]

    def kill(self) -> None:
        """SIGKILL, then reap."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=10)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM and wait; SIGKILL if it does not exit in time."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()


class Coordinator(Proc):
    """``tn-coordinator --demo`` on a free port with its own data directory."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        root.mkdir(parents=True)
        super().__init__(f"coordinator {root.name}", root / "coordinator.log")
        self.root = root
        self.data_dir = root / "data"
        self.data_dir.mkdir()
        self.env = _clean_env(env)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.tokens: dict[str, str] = {}

    def start(self, timeout_s: float = 20.0) -> Coordinator:
        self._spawn([str(BIN / "tn-coordinator"), "--host", "127.0.0.1", "--port",
                     str(self.port), "--data-dir", str(self.data_dir), "--demo"],
                    self.env, self.root)
        wait_until(self._healthy, timeout_s, f"{self.url}/healthz", watch=(self,))
        self.tokens = json.loads((self.data_dir / "demo.json").read_text())
        return self

    def restart(self) -> Coordinator:
        """Start again on the same port and data directory (stops it first if running)."""
        self.stop()
        return self.start()

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    @property
    def customer_token(self) -> str:
        return self.tokens["customer_token"]

    @property
    def worker_token(self) -> str:
        return self.tokens["worker_token"]

    @property
    def admin_token(self) -> str:
        return self.tokens["admin_token"]

    def api(self, token: str | None = None) -> Api:
        """A REST client; the demo customer's token unless another is given."""
        return Api(self.url, self.customer_token if token is None else token)


class Worker(Proc):
    """``tn-worker connect`` with its own cache dir and temp dir."""

    def __init__(self, root: Path, coordinator: Coordinator, worker_id: str, slots: int,
                 env: dict[str, str] | None, extra_args: list[str]) -> None:
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(f"worker {worker_id}", root / f"{worker_id}.log")
        self.worker_id = worker_id
        self.root = root
        tmp = root / f"{worker_id}-tmp"
        tmp.mkdir(exist_ok=True)
        self.argv = [str(BIN / "tn-worker"), "connect", "--url", coordinator.ws_url,
                     "--token", coordinator.worker_token, "--id", worker_id, "--slots",
                     str(slots), "--cache-dir", str(root / f"{worker_id}-cache"), *extra_args]
        self.env = _clean_env({"TMPDIR": str(tmp), **(env or {})})

    def start(self) -> Worker:
        self._spawn(self.argv, self.env, self.root)
        return self

    def count(self, text: str) -> int:
        return self.log().count(text)

    def connections(self) -> int:
        return self.count("connected as ")

    def wait_connected(self, times: int = 1, timeout_s: float = 20.0) -> None:
        """Wait until the worker has printed "connected as" ``times`` times in all."""
        wait_until(self.connections, timeout_s, f"{self.name} to connect (#{times})",
                   ready=lambda n: n >= times, watch=(self,))


class Cluster:
    """Starts processes under ``root`` and kills all of them in ``close``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[Proc] = []
        self._n = 0

    def coordinator(self, env: dict[str, str] | None = None, *, start: bool = True) -> Coordinator:
        self._n += 1
        coord = Coordinator(self.root / f"coord{self._n}", env)
        self.procs.append(coord)
        return coord.start() if start else coord

    def worker(self, coordinator: Coordinator, worker_id: str, slots: int = 2,
               env: dict[str, str] | None = None, extra_args: list[str] | None = None,
               *, wait: bool = True) -> Worker:
        worker = Worker(self.root / "workers", coordinator, worker_id, slots, env,
                        extra_args or [])
        self.procs.append(worker.start())
        if wait:
            worker.wait_connected()
        return worker

    def close(self) -> None:
        workers = [p for p in self.procs if isinstance(p, Worker)]
        for p in workers:  # signal all first so they shut down in parallel
            if p.alive and p.popen is not None:
                p.popen.send_signal(signal.SIGTERM)
        for p in workers:
            p.stop(timeout_s=5)
        for p in self.procs:
            if not isinstance(p, Worker):
                p.stop(timeout_s=10)
