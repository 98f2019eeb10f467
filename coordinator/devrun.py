"""``make run``: the whole system on its embedded default, on this machine.

Starts ``tn-coordinator --demo`` on SQLite under ./storage, two local workers, and (once) a
small demo task; prints the URL and the demo tokens. Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DEMO_CODE = '''\
import hashlib


def process(item):
    """Demo: hash each word a few thousand times (a little real work per item)."""
    digest = item["word"].encode()
    for _ in range(20000):
        digest = hashlib.sha256(digest).digest()
    return {"word": item["word"], "hash": digest.hex()[:16]}
'''


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the coordinator exited with {proc.returncode}; see its output")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the coordinator did not answer {url}/healthz within {timeout_s:.0f}s")


def _submit_demo(url: str, token: str, data_dir: Path) -> str | None:
    from client.sdk import Client

    client = Client(url, token)
    if client.list_tasks():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        code, data = Path(tmp, "main.py"), Path(tmp, "words.json")
        code.write_text(DEMO_CODE)
        words = [{"word": f"word-{i}"} for i in range(2000)]
        data.write_text(json.dumps(words))
        created = client.submit_task(code, data, {"chunk_size": 20, "name": "demo: hash words"})
    return str(created["id"])


def main() -> int:
    host = os.environ.get("TN_HOST", "127.0.0.1")
    port = int(os.environ.get("TN_PORT", "8000"))
    data_dir = Path(os.environ.get("TN_DATA_DIR", "storage"))
    url = f"http://{host}:{port}"
    bindir = Path(sys.executable).parent
    procs: list[subprocess.Popen[bytes]] = []
    try:
        coord = subprocess.Popen([str(bindir / "tn-coordinator"), "--host", host, "--port",
                                  str(port), "--data-dir", str(data_dir), "--demo"])
        procs.append(coord)
        _wait_ready(url, coord)
        tokens = json.loads((data_dir / "demo.json").read_text())
        procs.append(subprocess.Popen(
            [str(bindir / "tn-worker"), "swarm", "demo-worker-1", "demo-worker-2",
             "--url", f"ws://{host}:{port}", "--slots", "2",
             "--cache-dir", str(data_dir / "worker-cache")],
            env={**os.environ, "TN_TOKEN": tokens["worker_token"]},
        ))
        task_id = _submit_demo(url, tokens["customer_token"], data_dir)
        print(f"""
Task Network is running at {url}  (Ctrl-C stops everything)
  customer token: {tokens['customer_token']}
  worker token:   {tokens['worker_token']}
  admin token:    {tokens['admin_token']}
  demo task:      {task_id or 'already submitted earlier'}
Try:  .venv/bin/tn --url {url} --token <customer token> task list
""", flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        print("stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
