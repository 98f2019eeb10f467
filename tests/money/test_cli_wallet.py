"""``tn wallet``, ``tn task fund`` and ``tn admin withdrawals`` against a small fake REST
server: what they send (integer units) and what they print (credits with two decimals)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pytest

from client import tn
from tests.cli.fakes import JsonHandler

WALLET = {"account_id": "a_me", "balance": 123456, "pending_withdrawals": 600,
          "in_escrow": 2500, "earned": 95, "sandbox": True, "stripe": False}
TX = {"id": 7, "kind": "payout", "account": "wallet", "amount": 95, "at_ms": 1_700_000_000_000,
      "task_id": "t1", "chunk": 3, "memo": "worker w1"}


class Fake(JsonHandler):
    seen: list[tuple[str, str, Any]]

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path, None))
        path = self.path.split("?")[0]
        if path == "/api/wallet":
            self.reply(200, WALLET)
        elif path == "/api/wallet/transactions":
            self.reply(200, {"transactions": [TX, {**TX, "id": 6, "kind": "withdrawal_hold",
                                                   "account": "pending", "amount": 600,
                                                   "task_id": None, "chunk": None,
                                                   "memo": ""}],
                             "next_offset": 2})
        elif path == "/api/wallet/earnings":
            self.reply(200, {"tasks": [{"task_id": "t1", "chunks": 3, "credited": 285}],
                             "chunks": 3, "total": 285})
        elif path == "/api/admin/withdrawals":
            self.reply(200, {"withdrawals": [{"id": 42, "account_id": "a_w", "amount": 600,
                                              "state": "pending", "created_ms": 0}]})
        else:
            self.reply(404, {"error": "no", "field": None})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.seen.append(("POST", self.path, body))
        if self.path == "/api/wallet/deposit":
            if body.get("method") == "checkout":
                self.reply(201, {"amount": body["amount"], "checkout_url": "https://pay/cs_1",
                                 "session_id": "cs_1"})
            else:
                self.reply(201, {"amount": body["amount"], "balance": 124690})
        elif self.path == "/api/wallet/withdraw":
            self.reply(402, {"error": "your wallet holds 5; you can withdraw at most that",
                             "field": None}) if body["amount"] > 10**6 else self.reply(
                202, {"id": 9, "amount": body["amount"], "state": "pending", "balance": 100,
                      "pending_withdrawals": body["amount"]})
        elif self.path == "/api/tasks/t1/fund":
            self.reply(200, {"id": "t1", "state": "running", "remaining": body["amount"],
                             "needs_funds": False})
        elif self.path.startswith("/api/admin/withdrawals/42/"):
            state = "approved" if self.path.endswith("approve") else "rejected"
            self.reply(200, {"id": 42, "account_id": "a_w", "amount": 600, "state": state,
                             "created_ms": 0})
        else:
            self.reply(404, {"error": "no", "field": None})


@pytest.fixture
def fake() -> Iterator[tuple[str, list[tuple[str, str, Any]]]]:
    seen: list[tuple[str, str, Any]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (Fake,), {"seen": seen}))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run(url: str, *argv: str) -> int:
    return tn.main(["--url", url, "--token", "tok", *argv])


def test_balance(fake: tuple[str, list[Any]], capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = fake
    assert run(url, "wallet", "balance") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["balance", "1234.56"]
    assert out[1].split()[:2] == ["held", "6.00"]
    assert out[2].split()[:3] == ["in", "escrow", "25.00"]
    assert out[3].split()[:2] == ["earned", "0.95"]
    assert "sandbox" in out[4]
    assert run(url, "wallet", "balance", "--json") == 0
    assert json.loads(capsys.readouterr().out) == WALLET


def test_deposit_sends_integer_units(fake: tuple[str, list[Any]],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    url, seen = fake
    assert run(url, "wallet", "deposit", "12.34") == 0
    assert seen[-1] == ("POST", "/api/wallet/deposit", {"amount": 1234})
    assert capsys.readouterr().out.strip() == "deposited 12.34; balance 1246.90"
    assert run(url, "wallet", "deposit", "5", "--checkout", "--key", "k1") == 0
    assert seen[-1][2] == {"amount": 500, "idempotency_key": "k1", "method": "checkout"}
    assert "pay 5.00 at: https://pay/cs_1" in capsys.readouterr().out


def test_withdraw(fake: tuple[str, list[Any]], capsys: pytest.CaptureFixture[str]) -> None:
    url, seen = fake
    assert run(url, "wallet", "withdraw", "6") == 0
    assert seen[-1][2] == {"amount": 600}
    assert "withdrawal 9 of 6.00 is pending" in capsys.readouterr().out
    assert run(url, "wallet", "withdraw", "1000000") == 1
    assert "you can withdraw at most" in capsys.readouterr().err


def test_transactions_and_earnings(fake: tuple[str, list[Any]],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    url, seen = fake
    assert run(url, "wallet", "transactions", "--offset", "4", "--limit", "2") == 0
    assert seen[-1][1] == "/api/wallet/transactions?offset=4&limit=2"
    captured = capsys.readouterr()
    rows = captured.out.splitlines()
    assert rows[0].split() == ["ID", "WHEN", "KIND", "AMOUNT", "TASK", "CHUNK", "MEMO"]
    assert rows[1].split()[3:] == ["payout", "0.95", "t1", "3", "worker", "w1"]
    assert "withdrawal_hold (held)" in rows[2] and "6.00" in rows[2]
    assert "more: --offset 2" in captured.err
    assert run(url, "wallet", "earnings") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["t1", "3", "2.85"]
    assert out[-1] == "total: 2.85 for 3 chunks"


def test_task_fund_and_admin(fake: tuple[str, list[Any]],
                             capsys: pytest.CaptureFixture[str]) -> None:
    url, seen = fake
    assert run(url, "task", "fund", "t1", "2.5") == 0
    assert seen[-1] == ("POST", "/api/tasks/t1/fund", {"amount": 250})
    assert "task t1: added 2.50; remaining 2.50 · running" in capsys.readouterr().out
    assert run(url, "admin", "withdrawals", "list") == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["42", "a_w", "6.00"]
    assert run(url, "admin", "withdrawals", "approve", "42") == 0
    assert seen[-1][:2] == ("POST", "/api/admin/withdrawals/42/approve")
    assert "withdrawal 42 of 6.00 by a_w: approved" in capsys.readouterr().out
    assert run(url, "admin", "withdrawals", "reject", "42", "--json") == 0
    assert json.loads(capsys.readouterr().out)["state"] == "rejected"
    assert run(url, "admin", "withdrawals") == 2  # no action chosen
