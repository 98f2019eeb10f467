"""The SDK and ``tn`` against a fake REST server (stdlib HTTP), and ``tn watch`` against a
fake live socket (websockets): uploads, errors, tokens, results streaming, reconnects and
exit codes, never the real coordinator."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import python_multipart
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve

from client import sdk, tn
from tests.cli.fakes import JsonHandler, free_port, task_info

# ---- the SDK against a fake REST server --------------------------------------------------


class FakeApi(JsonHandler):
    """Just enough of the REST contract to exercise the SDK's plumbing."""

    results = b"[" + b",".join(b'{"n": %d}' % i for i in range(50_000)) + b"]"
    upload_bytes_max = 8 << 20
    seen: list[dict[str, Any]]  # class attribute set per test

    def do_GET(self) -> None:
        self.seen.append({"path": self.path, "auth": self.headers.get("Authorization")})
        if self.path == "/api/tasks":
            self.reply(200, {"tasks": [task_info()]})
        elif self.path == "/api/tasks/t1":
            self.reply(200, task_info())
        elif self.path.startswith("/api/tasks/t1/results"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.results)))
            self.end_headers()
            self.wfile.write(self.results)
        elif self.path.startswith("/api/tasks/running/results"):
            self.reply(409, {"error": "task running is still running", "field": None})
        else:
            self.reply(404, {"error": f"no such task: {self.path}", "field": None})

    def do_POST(self) -> None:
        if self.path == "/api/tasks":
            length = int(self.headers["Content-Length"])
            if length > self.upload_bytes_max:  # refuse unread, as a coordinator would
                self.close_connection = True
                self.reply(413, {"error": "the upload is too large", "field": "data"})
                return
            fields: dict[str, bytes] = {}

            def on_field(f: Any) -> None:
                fields[f.field_name.decode()] = f.value

            def on_file(f: Any) -> None:
                f.file_object.seek(0)
                fields[f.field_name.decode()] = f.file_object.read()
                f.close()

            headers = {"Content-Type": self.headers["Content-Type"], "Content-Length": str(length)}
            python_multipart.parse_form(headers, self.rfile, on_field, on_file)  # type: ignore[arg-type]
            self.seen.append({"path": self.path, "fields": fields})
            spec = json.loads(fields["spec"])
            if spec.get("name") == "reject":
                self.reply(400, {"error": "name is reserved", "field": "spec"})
            else:
                self.reply(201, {"id": "t9", "chunks_total": 3, "items_total": 100})
        else:
            self.reply(200, task_info(state="cancelled"))


@pytest.fixture
def api() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    handler = type("Handler", (FakeApi,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_submit_uploads_multipart_and_prints_the_id(
    api: tuple[str, list[dict[str, Any]]],
    inputs: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, seen = api
    code, data = inputs
    argv = ["--url", url, "--token", "s3cret", "task", "submit", "--code", str(code)]
    assert tn.main([*argv, "--data", str(data), "--max-attempts", "5"]) == 0
    assert capsys.readouterr().out == "t9\n"
    fields = seen[-1]["fields"]
    assert json.loads(fields["spec"]) == {"max_attempts": 5}
    assert fields["code"] == code.read_bytes() and fields["data"] == data.read_bytes()
    assert tn.main([*argv, "--data", str(data), "--json"]) == 0
    created = {"id": "t9", "chunks_total": 3, "items_total": 100}
    assert json.loads(capsys.readouterr().out) == created


def test_api_errors_exit_1_with_the_message(
    api: tuple[str, list[dict[str, Any]]],
    inputs: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, _ = api
    code, data = inputs
    argv = ["--url", url, "task", "submit", "--code", str(code), "--data", str(data)]
    assert tn.main([*argv, "--name", "reject"]) == 1
    assert capsys.readouterr().err == "error: name is reserved (field: spec)\n"
    assert tn.main(["--url", url, "task", "status", "nope"]) == 1
    assert capsys.readouterr().err == "error: no such task: /api/tasks/nope\n"


def test_a_refused_upload_reports_the_coordinators_error(
    api: tuple[str, list[dict[str, Any]]],
    inputs: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, _ = api
    code, _ = inputs
    big = tmp_path / "big.jsonl"
    big.write_bytes(b'{"x": 1}\n' * (4 << 20))  # 36 MiB: more than the socket buffers hold
    argv = ["--url", url, "task", "submit", "--code", str(code), "--data", str(big)]
    assert tn.main(argv) == 1
    assert capsys.readouterr().err == "error: the upload is too large (field: data)\n"


def test_list_status_cancel_send_the_token(
    api: tuple[str, list[dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, seen = api
    client = sdk.Client(url, "tok")
    assert client.list_tasks() == [task_info()]
    assert client.task("t1") == task_info()
    assert client.cancel("t1")["state"] == "cancelled"
    assert seen[0]["auth"] == "Bearer tok"
    assert tn.main(["--url", url, "task", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["t1", "demo", "running"]
    assert tn.main(["--url", url, "task", "status", "t1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == task_info()
    assert tn.main(["--url", url, "task", "cancel", "t1"]) == 0
    assert capsys.readouterr().out == "task t1: cancelled\n"


def test_results_stream_to_a_file(
    api: tuple[str, list[dict[str, Any]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, seen = api
    out = tmp_path / "out.jsonl"
    assert tn.main(["--url", url, "task", "results", "t1", "-o", str(out)]) == 0
    assert out.read_bytes() == FakeApi.results
    assert seen[-1]["path"] == "/api/tasks/t1/results?format=jsonl"  # from the suffix
    assert not (tmp_path / "out.jsonl.part").exists()
    sink = io.BytesIO()
    blocks: list[int] = []
    written = sdk.Client(url, "").results_to("t1", sink, progress=lambda n, t: blocks.append(n))
    assert written == len(FakeApi.results) == blocks[-1] and len(blocks) > 1
    assert seen[-1]["path"] == "/api/tasks/t1/results"


def test_unfinished_results_leave_no_file(
    api: tuple[str, list[dict[str, Any]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = api
    out = tmp_path / "out.json"
    assert tn.main(["--url", url, "task", "results", "running", "-o", str(out)]) == 1
    assert "still running" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ---- watch against a fake live socket ----------------------------------------------------


Script = Callable[[ServerConnection, int], None]


@pytest.fixture
def live() -> Iterator[Callable[[Script], tuple[str, list[Any]]]]:
    """Start a websockets server running ``script(connection, n)`` for the n-th connection;
    it also answers ``GET /api/tasks/<id>`` over plain HTTP with a running task."""
    servers: list[Any] = []
    threads: list[threading.Thread] = []

    def start(script: Script) -> tuple[str, list[Any]]:
        log: list[Any] = []

        def process_request(conn: ServerConnection, request: Request) -> Response | None:
            if request.path.startswith("/api/tasks/"):
                task_id = request.path.rsplit("/", 1)[1]
                body = json.dumps(task_info(id=task_id, chunks_done=0)).encode()
                headers = Headers([("Content-Type", "application/json")])
                return Response(200, "OK", headers, body)
            log.append(("auth", request.headers.get("Authorization")))
            return None

        def handler(conn: ServerConnection) -> None:
            log.append(("subscribe", json.loads(conn.recv())))
            script(conn, sum(1 for entry in log if entry[0] == "subscribe"))

        server = serve(handler, "127.0.0.1", 0, process_request=process_request)
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        servers.append(server)
        threads.append(thread)
        return f"http://127.0.0.1:{server.socket.getsockname()[1]}", log

    yield start
    for server in servers:
        server.shutdown()
    for thread in threads:
        thread.join()


def frame(**task: Any) -> str:
    return json.dumps({"type": "task", "task": task_info(**task)})


def drop_then_complete(conn: ServerConnection, n: int) -> None:
    if n == 1:
        conn.send(frame(chunks_done=100))
        conn.send(frame(chunks_done=200))
        conn.close(1011, "slow subscriber")
    else:
        conn.send(frame(id="other", state="completed"))  # someone else's task: ignored
        conn.send(frame(chunks_done=300))
        conn.send(frame(chunks_done=1000, chunks_leased=0, state="completed"))
        conn.wait_closed()


async def test_watch_task_reconnects_and_resubscribes(live: Any) -> None:
    url, log = live(drop_then_complete)
    seen: list[int] = []

    def on_update(task: dict[str, Any]) -> bool:
        seen.append(task["chunks_done"])
        return bool(task["state"] == "completed")

    final = await sdk.watch_task(url, "tok", "t1", on_update, backoff_initial_s=0.01)
    assert final["state"] == "completed"
    assert seen == [100, 200, 300, 1000]
    subscribes = [entry[1] for entry in log if entry[0] == "subscribe"]
    assert subscribes == [{"type": "subscribe", "topics": ["task:t1"]}] * 2
    assert ("auth", "Bearer tok") in log


async def test_watch_task_error_frame_for_the_task_is_fatal(live: Any) -> None:
    def refuse(conn: ServerConnection, n: int) -> None:
        conn.send(json.dumps({"type": "error", "reason": "no such task", "topic": "task:t1"}))
        conn.wait_closed()

    url, _ = live(refuse)
    with pytest.raises(sdk.WatchError, match="no such task"):
        await sdk.watch_task(url, "tok", "t1", lambda task: False)


async def test_watch_task_gives_up_when_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(sdk.ConnectError, match="/ws/live"):
        await sdk.watch_task(
            url, "", "t1", lambda t: True, backoff_initial_s=0.01, give_up_after_s=0.1
        )


@pytest.mark.parametrize(("state", "code"), [("completed", 0), ("failed", 1), ("cancelled", 1)])
def test_watch_command_exit_codes_and_plain_output(
    live: Any, state: str, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    def finish(conn: ServerConnection, n: int) -> None:
        conn.send(frame(chunks_done=500))
        conn.send(frame(chunks_done=600, chunks_failed=4, state=state))
        conn.wait_closed()

    url, _ = live(finish)
    assert tn.main(["--url", url, "task", "watch", "t1"]) == code
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("[#####-----] 50% 500/1000 chunks")
    assert err[-2] == f"[######----] 60% 600/1000 chunks · 12 leased · 4 failed · {state}"
    assert err[-1] == f"task t1 {state}"
