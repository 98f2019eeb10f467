"""Shared helpers of the benchmarks: a real coordinator and real workers as processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, args: list[str], env: dict[str, str] | None = None,
                 log: Path | None = None) -> None:
        self.log = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
        self.p = subprocess.Popen(args, env={**os.environ, **(env or {})},
                                  stdout=self.log, stderr=subprocess.STDOUT)

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()


class Coordinator(Proc):
    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        super().__init__([str(BIN / "tn-coordinator"), "--port", str(self.port), "--data-dir",
                          str(data_dir), "--demo"], env, data_dir.parent / "coordinator.log")
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.p.poll() is not None:
                    raise RuntimeError("coordinator did not start") from None
                time.sleep(0.05)
        self.tokens: dict[str, str] = json.loads((data_dir / "demo.json").read_text())

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Any:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers={
            "Authorization": f"Bearer {self.tokens['customer_token']}", **(headers or {})})
        with urllib.request.urlopen(req, timeout=600) as resp:
            return json.loads(resp.read())

    def submit(self, code: str, items: list[Any], spec: dict[str, Any]) -> dict[str, Any]:
        boundary = "tnbenchboundary"
        parts = [
            ("code", "main.py", code.encode()),
            ("data", "data.json", json.dumps(items).encode()),
        ]
        body = b""
        for name, filename, content in parts:
            body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                     f"filename=\"{filename}\"\r\n\r\n").encode() + content + b"\r\n"
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"spec\"\r\n\r\n"
                 f"{json.dumps(spec)}\r\n--{boundary}--\r\n").encode()
        result: dict[str, Any] = self.request(
            "POST", "/api/tasks", body,
            {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        return result

    def task(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/api/tasks/{task_id}")
        return result

    def wait_task(self, task_id: str, timeout_s: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.task(task_id)
            if info["state"] != "running":
                return info
            if time.monotonic() > deadline:
                raise RuntimeError(f"task still running: {info}")
            time.sleep(0.02)


def start_worker(coord: Coordinator, wid: str, slots: int, cache: Path,
                 extra: list[str] | None = None) -> Proc:
    return Proc([str(BIN / "tn-worker"), "connect", "--url", f"ws://127.0.0.1:{coord.port}",
                 "--id", wid, "--slots", str(slots), "--cache-dir", str(cache), *(extra or [])],
                {"TN_TOKEN": coord.tokens["worker_token"]})
