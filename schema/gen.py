"""Generate JSON Schema for every wire message and REST body into ``schema/json/``.

    python -m schema.gen           # write the files
    python -m schema.gen --check   # exit 1 if any file is stale (the tests run this)
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from schema import live, rest, worker

OUT = Path(__file__).parent / "json"

DOCUMENTS: dict[str, Any] = {
    "worker-to-coordinator": worker.WorkerMessage,
    "coordinator-to-worker": worker.CoordinatorMessage,
    "live-client": live.LiveClientMessage,
    "live-server": live.LiveServerMessage,
    "rest-task-spec": rest.TaskSpec,
    "rest-task-info": rest.TaskInfo,
    "rest-task-created": rest.TaskCreated,
    "rest-task-list": rest.TaskList,
    "rest-chunk-page": rest.ChunkPage,
    "rest-chunk-detail": rest.ChunkDetail,
    "rest-error": rest.ErrorBody,
    "rest-deposit-request": rest.DepositRequest,
    "rest-withdraw-request": rest.WithdrawRequest,
    "rest-fund-request": rest.FundRequest,
    "rest-wallet": rest.Wallet,
    "rest-deposit-result": rest.DepositResult,
    "rest-withdraw-result": rest.WithdrawResult,
    "rest-transaction-page": rest.TransactionPage,
    "rest-earnings": rest.Earnings,
    "rest-withdrawal-list": rest.WithdrawalList,
    "rest-ledger-summary": rest.LedgerSummary,
    "rest-token-create": rest.TokenCreate,
    "rest-token-created": rest.TokenCreated,
    "rest-token-list": rest.TokenList,
    "rest-audit-page": rest.AuditPage,
}


def _clean(node: Any) -> Any:
    """Descriptions dedented the same whichever msgspec made them (0.23 dedents docstrings
    itself, older versions keep their indentation)."""
    if isinstance(node, dict):
        return {k: inspect.cleandoc(v) if k == "description" and isinstance(v, str)
                else _clean(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node


def render() -> dict[str, str]:
    out = {}
    for name, tp in DOCUMENTS.items():
        doc = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": name,
               **_clean(msgspec.json.schema(tp))}
        if name.startswith(("worker", "coordinator")):
            doc["description"] = (
                f"Protocol {worker.PROTOCOL_VERSION}. Sent as MessagePack in binary frames; "
                "fields typed 'any' here (items, output) are MessagePack arrays."
            )
        out[f"{name}.json"] = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    return out


def stale() -> list[str]:
    return [
        name for name, text in render().items()
        if not (OUT / name).is_file() or (OUT / name).read_text() != text
    ] + sorted(p.name for p in OUT.glob("*.json") if p.name not in render())


def main(argv: list[str]) -> int:
    if "--check" in argv:
        bad = stale()
        if bad:
            print(f"stale JSON Schema: {', '.join(bad)}; run `python -m schema.gen`")
            return 1
        return 0
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
