"""``make run``: the whole system on its embedded default, on this machine.

Starts ``tn-coordinator --demo`` on SQLite under ./storage, two local workers, and (once) a
small paid demo task; prints the URL and the demo tokens. Ctrl-C stops everything cleanly.
Money runs in sandbox mode: every account starts with ``DEV_INITIAL_WALLET`` credits.
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
DEV_INITIAL_WALLET = "100000"  # 1000.00 credits per account (1 credit = 100 units)
DEMO_PRICE_PER_CHUNK = 10  # 0.10 credits per chunk (0.01 of it the 10 % fee): 100 chunks cost 10.00
DEMO_BUDGET = 1200  # a little more than the task costs; the rest returns when it ends


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
        created = client.submit_task(code, data, {
            "chunk_size": 20, "name": "demo: hash words",
            "price_per_chunk": DEMO_PRICE_PER_CHUNK, "budget": DEMO_BUDGET,
        })
    return str(created["id"])


def main() -> int:
    host = os.environ.get("TN_HOST", "127.0.0.1")
    port = int(os.environ.get("TN_PORT", "8000"))
    data_dir = Path(os.environ.get("TN_DATA_DIR", "storage"))
    url = f"http://{host}:{port}"
    bindir = Path(sys.executable).parent
    procs: list[subprocess.Popen[bytes]] = []
    try:
        money = {"WALLET_SANDBOX_ENABLED": os.environ.get("WALLET_SANDBOX_ENABLED", "true"),
                 "DEV_INITIAL_WALLET": os.environ.get("DEV_INITIAL_WALLET", DEV_INITIAL_WALLET)}
        coord = subprocess.Popen([str(bindir / "tn-coordinator"), "--host", host, "--port",
                                  str(port), "--data-dir", str(data_dir), "--demo"],
                                 env={**os.environ, **money})
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
      .venv/bin/tn --url {url} --token <customer token> wallet balance
      .venv/bin/tn --url {url} --token <worker token> wallet earnings
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
