"""Refused task submissions: a 400 that names the field, or 401/403/404; nothing is created.

The module's coordinator has a small code limit (TN_CODE_BYTES_MAX) and no workers. A second
customer account is created through ``coordinator.accounts`` *before* the coordinator starts
(there is no REST route for accounts, and the store must not be shared with a running
coordinator).
"""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coordinator.accounts import Accounts
from coordinator.store.sqlite import SqliteStore
from tests.e2e.harness import Cluster, Coordinator
from tests.e2e.rest import Api, Part

CODE_BYTES_MAX = 4096
MAIN = b"def process(item):\n    return item\n"
DATA = b"[1, 2, 3]"


def make_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in files.items():
            zf.writestr(zipfile.ZipInfo(name), content)
    return buf.getvalue()


async def _create_customer(db: Path, name: str) -> str:
    store = await SqliteStore.open(db)
    try:
        accounts = Accounts(store)
        return await accounts.issue_token(await accounts.create(name, "customer"), "e2e")
    finally:
        await store.close()


@dataclass
class Stack:
    coordinator: Coordinator
    customer: Api
    other_customer: Api
    admin: Api
    task_id: str  # a task of the demo customer; it stays running (there are no workers)


@pytest.fixture(scope="module")
def stack(module_cluster: Cluster) -> Iterator[Stack]:
    coord = module_cluster.coordinator({"TN_CODE_BYTES_MAX": str(CODE_BYTES_MAX)}, start=False)
    other_token = asyncio.run(_create_customer(coord.data_dir / "coordinator.sqlite3", "other"))
    coord.start()
    customer = coord.api()
    created = customer.submit(MAIN, DATA, {"chunk_size": 2, "name": "mine"})
    yield Stack(coord, customer, coord.api(other_token), coord.api(coord.admin_token),
                created["id"])


def snapshot(s: Stack) -> tuple[list[Any], list[str]]:
    """Every task (the admin sees all) and every entry of the task files directory."""
    tasks_dir = s.coordinator.data_dir / "tasks"
    files = sorted(p.name for p in tasks_dir.iterdir()) if tasks_dir.is_dir() else []
    return s.admin.tasks(), files


def parts(code: bytes | None = MAIN, data: bytes | None = DATA, spec: str | None = None,
          code_name: str = "main.py", data_name: str = "data.json") -> list[Part]:
    out: list[Part] = []
    if code is not None:
        out.append(("code", code_name, code))
    if data is not None:
        out.append(("data", data_name, data))
    if spec is not None:
        out.append(("spec", None, spec.encode()))
    return out


BAD_UPLOADS = {
    "data-not-json": (parts(data=b'{"a": 1, oops'), "data", "malformed"),
    "data-not-an-array": (parts(data=b'{"a": 1}'), "data", "JSON array"),
    "data-empty-array": (parts(data=b"[]"), "data", "no items"),
    "data-empty-file": (parts(data=b""), "data", "empty"),
    "data-bad-jsonl-line": (parts(data=b'{"a": 1}\n{nope\n', data_name="d.jsonl"), "data",
                            "line 2"),
    "zip-without-main": (parts(code=make_zip({"helper.py": MAIN}), code_name="c.zip"), "code",
                         "no main.py"),
    "zip-with-dotdot-member": (parts(code=make_zip({"main.py": MAIN, "../evil.py": b"x = 1\n"}),
                                     code_name="c.zip"), "code", "'..'"),
    "zip-not-a-zip": (parts(code=b"PK\x03\x04 not really", code_name="c.zip"), "code",
                      "not a valid zip"),
    "code-over-limit": (parts(code=MAIN + b"#" * CODE_BYTES_MAX), "code", "over the limit"),
    "code-without-process": (parts(code=b"def run(x):\n    return x\n"), "code",
                             "process(item)"),
    "code-syntax-error": (parts(code=b"def process(item:\n"), "code", "syntax error"),
    "code-wrong-type": (parts(code_name="main.txt"), "code", "main.txt"),
    "spec-unknown-field": (parts(spec='{"chunk_size": 10, "colour": "red"}'), "spec", "colour"),
    "spec-chunk-size-zero": (parts(spec='{"chunk_size": 0}'), "spec", "chunk_size"),
    "spec-not-json": (parts(spec="chunk_size=10"), "spec", "bad spec"),
    "missing-code-part": (parts(code=None), "code", "'code'"),
    "missing-data-part": (parts(data=None), "data", "'data'"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_refused_with_field(stack: Stack, case: str) -> None:
    body_parts, field, says = BAD_UPLOADS[case]
    before = snapshot(stack)

    resp = stack.customer.post_task(body_parts)

    assert resp.status == 400, (resp.status, resp.raw)
    body = resp.json
    assert set(body) == {"error", "field"}, body
    assert body["field"] == field, body
    assert says in body["error"], body
    assert snapshot(stack) == before, "a refused upload left something behind"


def test_spec_as_file_part_is_refused_with_spec_field(stack: Stack) -> None:
    before = snapshot(stack)
    resp = stack.customer.post_task([*parts(), ("spec", "spec.json", b'{"chunk_size": 1}')])
    assert resp.status == 400
    assert snapshot(stack) == before
    assert resp.json["field"] == "spec", resp.json


def valid_upload(api: Api) -> tuple[int, dict[str, Any]]:
    resp = api.post_task(parts(spec=json.dumps({"chunk_size": 1})))
    return resp.status, resp.json


def test_no_token_is_401(stack: Stack) -> None:
    before = snapshot(stack)
    anonymous = Api(stack.coordinator.url, None)
    status, body = valid_upload(anonymous)
    assert status == 401 and "Authorization: Bearer" in body["error"], body
    resp = anonymous.call("GET", f"/api/tasks/{stack.task_id}")
    assert resp.status == 401
    assert snapshot(stack) == before


def test_unknown_token_is_401(stack: Stack) -> None:
    before = snapshot(stack)
    status, body = valid_upload(Api(stack.coordinator.url, "tn_not-a-real-token"))
    assert status == 401 and body["error"], body
    assert snapshot(stack) == before


def test_worker_token_cannot_create_tasks(stack: Stack) -> None:
    before = snapshot(stack)
    worker = stack.coordinator.api(stack.coordinator.worker_token)
    status, body = valid_upload(worker)
    assert status == 403 and "worker" in body["error"], body
    assert worker.call("GET", "/api/tasks").status == 403
    assert snapshot(stack) == before


def test_other_customers_task_is_404(stack: Stack) -> None:
    before = snapshot(stack)
    other, tid = stack.other_customer, stack.task_id
    for method, path in [("GET", f"/api/tasks/{tid}"), ("GET", f"/api/tasks/{tid}/chunks"),
                         ("GET", f"/api/tasks/{tid}/results?partial=true"),
                         ("POST", f"/api/tasks/{tid}/cancel")]:
        resp = other.call(method, path)
        assert resp.status == 404, (method, path, resp.status, resp.raw)
        assert resp.json["error"]
    assert other.tasks() == []
    assert stack.customer.task(tid)["state"] == "running", "the refused cancel took effect"
    assert stack.admin.task(tid)["id"] == tid  # the admin sees every task
    assert snapshot(stack) == before


def test_results_wait_for_a_running_task(stack: Stack) -> None:
    resp = stack.customer.call("GET", f"/api/tasks/{stack.task_id}/results")
    assert resp.status == 409 and "running" in resp.json["error"]
    assert stack.customer.results(stack.task_id, partial=True) == [None, None, None]
    assert stack.customer.call("GET", "/api/tasks/t_doesnotexist").status == 404
