"""Quorum 2-of-3 with real processes: two honest ``tn-worker`` processes on two worker
accounts and one dishonest worker (tests/e2e/dishonest_worker.py: the real worker code,
with every output swapped for a wrong one of the right length) on a third account.

The task must complete with every result right; the dishonest account must never be the
producer of a stored result, never be paid, and be told it is quarantined when it asks why
it is idle. Payouts are checked when the coordinator grants starting credit
(``DEV_INITIAL_WALLET``); without it the task runs at price 0 and the results table alone
is checked. The sqlite file is read after the coordinator has stopped.

Extra worker accounts are created through ``coordinator.accounts`` before the coordinator
starts (as test_uploads.py does), so the store is never shared with a running coordinator.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from coordinator.accounts import Accounts
from coordinator.store.sqlite import SqliteStore
from tests.e2e.harness import FAST_ENV, Cluster, Coordinator, Worker
from tests.e2e.rest import Api
from tests.e2e.waiting import wait_until

LIAR = Path(__file__).with_name("dishonest_worker.py")
CODE = "def process(x):\n    return {'square': x * x, 'next': x + 1}\n"
ITEMS = list(range(60))
EXPECTED = [{"square": x * x, "next": x + 1} for x in ITEMS]
PRICE, FEE_PERCENT = 10, 10


async def _worker_accounts(db: Path, *names: str) -> dict[str, tuple[str, str]]:
    """name -> (account id, token) of new worker accounts."""
    store = await SqliteStore.open(db)
    try:
        accounts = Accounts(store)
        out = {}
        for name in names:
            account = await accounts.create(name, "worker")
            out[name] = (account.id, await accounts.issue_token(account, "e2e"))
        return out
    finally:
        await store.close()


def start_worker(cluster: Cluster, coord: Coordinator, worker_id: str, token: str, *,
                 dishonest: bool = False) -> Worker:
    worker = Worker(cluster.root / "workers", coord, worker_id, 2, None, [])
    worker.argv[worker.argv.index("--token") + 1] = token
    if dishonest:  # the same arguments, through the launcher that corrupts outputs
        worker.argv[:1] = [sys.executable, str(LIAR)]
    cluster.procs.append(worker.start())
    return worker


def submit(api: Api, priced: bool) -> tuple[int, Any]:
    spec = {"name": "quorum 2 of 3", "chunk_size": 2, "verification": "quorum",
            "quorum_k": 3, "quorum_m": 2, "max_attempts": 3}
    if priced:  # at most six replicas per chunk before it fails: that much is reserved
        spec |= {"price_per_chunk": PRICE, "budget": PRICE * 6 * len(ITEMS) // 2}
    resp = api.post_task([("code", "main.py", CODE.encode()),
                          ("data", "data.json", json.dumps(ITEMS).encode()),
                          ("spec", None, json.dumps(spec).encode())])
    return resp.status, resp.json


def test_quorum_outvotes_a_dishonest_worker(cluster: Cluster) -> None:
    began = time.monotonic()
    coord = cluster.coordinator({**FAST_ENV, "DEV_INITIAL_WALLET": "1000000",
                                 "PLATFORM_FEE_PERCENT": str(FEE_PERCENT)}, start=False)
    db = coord.data_dir / "coordinator.sqlite3"
    made = asyncio.run(_worker_accounts(db, "honest-two", "liar"))
    coord.start()
    workers = [
        start_worker(cluster, coord, "honest-1", coord.worker_token),
        start_worker(cluster, coord, "honest-2", made["honest-two"][1]),
        start_worker(cluster, coord, "liar", made["liar"][1], dishonest=True),
    ]
    for w in workers:
        w.wait_connected()
    liar_id = made["liar"][0]
    api = coord.api()

    status, created = submit(api, priced=True)
    priced = status == 201
    if status == 402:  # no starting credit in this build: run it for free
        status, created = submit(api, priced=False)
    assert status == 201, (status, created)
    task_id = created["id"]
    info = api.wait_state(task_id, timeout_s=90, watch=tuple(workers))

    assert info["state"] == "completed", info
    assert api.results(task_id) == EXPECTED
    chunks = api.chunks(task_id)
    assert {c["state"] for c in chunks} == {"done"}
    assert "liar" not in {c["worker"] for c in chunks}, chunks
    lies = workers[2].count("lied: ")
    assert lies >= 1, "the dishonest worker never ran a chunk; the test proved nothing"
    # it disagreed at least twice: quarantined, and told so when it asks why it is idle
    wait_until(lambda: workers[2].count("idle: this worker is quarantined"), 40,
               "the dishonest worker to hear it is quarantined", watch=(workers[2],))

    for w in workers:
        w.stop()
    coord.stop()
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        rows = con.execute("SELECT chunk_index, account_id, worker_id FROM results"
                           " WHERE task_id = ?", (task_id,)).fetchall()
        assert sorted(r[0] for r in rows) == list(range(created["chunks_total"]))
        assert liar_id not in {r[1] for r in rows}, rows
        # no vote awaits a verdict; the cleared ones keep no output (only who was told
        # `accepted`, for re-sends after a restart)
        assert con.execute("SELECT COUNT(*) FROM votes WHERE task_id = ? AND (cleared = 0"
                           " OR length(output) > 0)", (task_id,)).fetchone() == (0,)
        payouts = con.execute(
            "SELECT t.chunk_index, t.lease_id, e.account, e.amount FROM transfers t"
            " JOIN entries e ON e.transfer_id = t.id"
            " WHERE t.kind = 'payout' AND t.task_id = ? AND e.account LIKE 'wallet:%'",
            (task_id,)).fetchall()
        liar_credits = con.execute(
            "SELECT t.kind, e.amount FROM transfers t JOIN entries e ON e.transfer_id = t.id"
            " WHERE e.account = ? AND t.kind != 'deposit'", (f"wallet:{liar_id}",)).fetchall()
    assert liar_credits == [], f"the dishonest account was credited: {liar_credits}"
    assert not any(acct == f"wallet:{liar_id}" for _, _, acct, _ in payouts)
    if priced:  # each chunk: the two agreeing replicas, the price less the fee, once each
        per_chunk: dict[int, list[str]] = {}
        for chunk, _, account, amount in payouts:
            assert amount == PRICE - PRICE * FEE_PERCENT // 100, (chunk, account, amount)
            per_chunk.setdefault(chunk, []).append(account)
        assert sorted(per_chunk) == list(range(created["chunks_total"]))
        assert all(len(set(a)) == len(a) == 2 for a in per_chunk.values()), per_chunk
        assert len({lease for _, lease, _, _ in payouts}) == len(payouts)
    print(f"quorum e2e: {created['chunks_total']} chunks, {lies} lies told, "
          f"{'priced' if priced else 'free'}, {time.monotonic() - began:.1f} s")
