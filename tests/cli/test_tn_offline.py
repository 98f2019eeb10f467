"""``tn`` and ``client.sdk`` without a coordinator: parsing, multipart bodies, validation,
error formatting and rendering; plus the SDK and ``watch`` against small in-process fakes
(a stdlib HTTP server and a websockets server), never the real coordinator.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import python_multipart
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve

from client import render, sdk, tn

# ---- helpers -----------------------------------------------------------------------------


def task_info(**overrides: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "id": "t1",
        "name": "demo",
        "owner": "alice",
        "state": "running",
        "chunks_total": 1000,
        "chunks_pending": 458,
        "chunks_leased": 12,
        "chunks_done": 530,
        "chunks_failed": 0,
        "items_total": 10_000,
        "items_done": 5300,
        "max_concurrency": 8,
        "max_attempts": 3,
        "chunk_size": 10,
        "requirements": ["gpu"],
        "created_ms": 1_700_000_000_000,
        "finished_ms": None,
    }
    info.update(overrides)
    return info


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def parse_multipart(body: sdk.MultipartBody) -> tuple[dict[str, str], dict[str, Any]]:
    """Parse a body back with python-multipart: (fields, files as (filename, ctype, bytes))."""
    raw = b"".join(body)
    assert len(raw) == body.length
    fields: dict[str, str] = {}
    files: dict[str, Any] = {}

    def on_field(field: Any) -> None:
        fields[field.field_name.decode()] = field.value.decode()

    def on_file(file: Any) -> None:
        file.file_object.seek(0)
        files[file.field_name.decode()] = (file.file_name.decode(), file.file_object.read())
        file.close()

    headers = {"Content-Type": body.content_type.encode(), "Content-Length": str(body.length)}
    python_multipart.parse_form(headers, io.BytesIO(raw), on_field, on_file)  # type: ignore[arg-type]
    return fields, files


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    code = tmp_path / "main.py"
    code.write_text("def process(item):\n    return item * 2\n")
    data = tmp_path / "data.json"
    data.write_text(json.dumps(list(range(100))))
    return code, data


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TN_URL", "API_BASE", "TN_TOKEN"):
        monkeypatch.delenv(name, raising=False)


# ---- argument parsing --------------------------------------------------------------------


def test_submit_arguments_parse(inputs: tuple[Path, Path]) -> None:
    code, data = inputs
    args = tn.build_parser().parse_args(
        ["task", "submit", "--code", str(code), "--data", str(data), "--chunk-size", "50",
         "--require", "gpu", "--require", "avx2", "--timeout", "2.5", "--name", "n", "--json"]
    )  # fmt: skip
    assert args.func is tn.cmd_submit
    assert (args.code, args.data, args.chunk_size, args.json) == (code, data, 50, True)
    assert tn.spec_from_args(args) == {
        "chunk_size": 50,
        "name": "n",
        "requirements": ["gpu", "avx2"],
        "chunk_timeout_ms": 2500,
    }


def test_only_given_options_go_into_the_spec(inputs: tuple[Path, Path]) -> None:
    code, _ = inputs
    args = tn.build_parser().parse_args(["task", "submit", "--code", str(code), "--data", "x"])
    assert tn.spec_from_args(args) == {}


@pytest.mark.parametrize(
    ("argv", "env", "url", "token"),
    [
        ([], {}, tn.DEFAULT_URL, ""),
        ([], {"API_BASE": "http://b:1", "TN_TOKEN": "e"}, "http://b:1", "e"),
        ([], {"API_BASE": "http://b:1", "TN_URL": "http://a:1"}, "http://a:1", ""),
        (["--url", "http://c:1", "--token", "x"], {"TN_URL": "http://a:1"}, "http://c:1", "x"),
        (["task", "list", "--url", "http://d:1"], {"TN_URL": "http://a:1"}, "http://d:1", ""),
    ],
)
def test_url_and_token_precedence(
    argv: list[str], env: dict[str, str], url: str, token: str
) -> None:
    if "task" not in argv:
        argv = [*argv, "task", "list"]
    args = tn.build_parser().parse_args(argv)
    assert tn.resolve_url(args, env) == url
    assert tn.resolve_token(args, env) == token


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["task"],
        ["task", "frobnicate"],
        ["task", "submit", "--data", "d.json"],
        ["task", "submit", "--code", "a.py", "--data", "d.json", "--chunk-size", "0"],
        ["task", "submit", "--code", "a.py", "--data", "d.json", "--max-attempts", "x"],
        ["task", "submit", "--code", "a.py", "--data", "d.json", "--timeout", "-1"],
        ["task", "submit", "--code", "a.py", "--data", "d.json", "--timeout", "nan"],
        ["task", "results", "t1", "--format", "xml"],
        ["task", "chunks", "t1", "--offset", "-1"],
        ["task", "chunks", "t1", "--limit", "0"],
        ["--url", "ftp://host", "task", "list"],
        ["--url", "http://host:1/?q=1", "task", "list"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert tn.main(argv) == 2
    assert capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert tn.main(["task", "submit", "--help"]) == 0
    assert "--max-concurrency" in capsys.readouterr().out


# ---- option validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-attempts", "1000"], "invalid --max-attempts"),
        (["--chunk-size", "10000000"], "invalid --chunk-size"),
        (["--max-concurrency", "1000000"], "invalid --max-concurrency"),
        (["--timeout", "0.01"], "invalid --timeout: must be between 0.1 and 86400 seconds"),
        (["--timeout", "100000"], "invalid --timeout: must be between 0.1 and 86400 seconds"),
        (["--require", ""], "invalid --require"),
        (["--name", "x" * 500], "invalid --name"),
    ],
)
def test_out_of_range_options_are_usage_errors(
    inputs: tuple[Path, Path], extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, data = inputs
    argv = ["--url", f"http://127.0.0.1:{free_port()}", "task", "submit"]
    assert tn.main([*argv, "--code", str(code), "--data", str(data), *extra]) == 2
    assert message in capsys.readouterr().err


def test_input_files_are_checked_before_upload(
    inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, data = inputs
    base = ["--url", f"http://127.0.0.1:{free_port()}", "task", "submit"]
    assert tn.main([*base, "--code", str(tmp_path / "nope.py"), "--data", str(data)]) == 2
    assert "--code: no such file" in capsys.readouterr().err
    assert tn.main([*base, "--code", str(data), "--data", str(data)]) == 2
    assert "a .py file or a .zip" in capsys.readouterr().err
    assert tn.main([*base, "--code", str(code), "--data", str(tmp_path)]) == 2
    assert "--data: no such file" in capsys.readouterr().err


# ---- multipart ---------------------------------------------------------------------------


def test_multipart_round_trips_through_python_multipart(inputs: tuple[Path, Path]) -> None:
    code, data = inputs
    spec = {"chunk_size": 7, "name": 'quote " and ünïcode'}
    body = sdk.MultipartBody({"spec": json.dumps(spec)}, {"code": code, "data": data})
    fields, files = parse_multipart(body)
    assert json.loads(fields["spec"]) == spec
    assert files["code"] == ("main.py", code.read_bytes())
    assert files["data"] == ("data.json", data.read_bytes())


def test_multipart_round_trips_through_the_email_parser(tmp_path: Path) -> None:
    code = tmp_path / "bundle.zip"
    code.write_bytes(bytes(range(256)) * 10)  # binary, with CR/LF bytes inside
    data = tmp_path / 'we"ird\nname.csv'
    data.write_bytes(b"a,b\r\n1,2\r\n")
    body = sdk.MultipartBody({"spec": "{}"}, {"code": code, "data": data})
    raw = b"".join(body)
    assert len(raw) == body.length
    head = f"Content-Type: {body.content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    parts = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
    assert parts["spec"].get_payload(decode=True) == b"{}"
    assert parts["code"].get_content_type() == "application/zip"
    assert parts["code"].get_payload(decode=True) == code.read_bytes()
    assert parts["data"].get_content_type() == "text/csv"
    assert parts["data"].get_filename() == "we%22ird%0Aname.csv"
    assert parts["data"].get_payload(decode=True) == data.read_bytes()


def test_multipart_streams_in_bounded_blocks_with_progress(tmp_path: Path) -> None:
    big = tmp_path / "data.jsonl"
    big.write_bytes(b'{"x": 1}\n' * 300_000)  # ~2.7 MB
    code = tmp_path / "main.py"
    code.write_text("def process(x): return x\n")
    seen: list[tuple[int, int | None]] = []
    files = {"code": code, "data": big}
    body = sdk.MultipartBody({"spec": "{}"}, files, progress=lambda s, t: seen.append((s, t)))
    assert body.length > big.stat().st_size
    sizes = [len(block) for block in body]
    assert max(sizes) <= sdk.BLOCK_BYTES + 1024
    assert sum(sizes) == body.length
    assert seen[-1] == (body.length, body.length)
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)
    assert body.complete


@pytest.mark.parametrize("change", [b"more", b""])
def test_multipart_refuses_a_file_that_changed_size(tmp_path: Path, change: bytes) -> None:
    data = tmp_path / "data.json"
    data.write_bytes(b"[1, 2, 3]")
    body = sdk.MultipartBody({}, {"data": data})
    data.write_bytes(b"[1, 2, 3]" + change if change else b"[1]")
    with pytest.raises(OSError, match="while it was being uploaded"):
        b"".join(body)


# ---- URLs and errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "live"),
    [
        ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/ws/live"),
        ("https://tn.example.com/", "wss://tn.example.com/ws/live"),
        ("http://host:81/prefix/", "ws://host:81/prefix/ws/live"),
    ],
)
def test_live_url(url: str, live: str) -> None:
    assert sdk.live_url(url) == live


def test_error_formatting() -> None:
    assert tn.format_api_error(sdk.ApiError(400, "chunk_size too big", "spec")) == (
        "error: chunk_size too big (field: spec)"
    )
    assert tn.format_api_error(sdk.ApiError(404, "no such task", None)) == "error: no such task"
    assert "TN_TOKEN" in tn.format_api_error(sdk.ApiError(401, "bad token", None))
    text = tn.format_connect_error(sdk.ConnectError("http://h:1", "Connection refused"))
    assert "http://h:1" in text and "--url" in text and "TN_URL" in text
    assert "--url" not in tn.format_connect_error(sdk.TransferError("http://h:1", "reset"))


def test_error_bodies_are_decoded() -> None:
    err = sdk._decode_error(400, "Bad Request", b'{"error": "bad spec", "field": "spec"}')
    assert (err.status, err.message, err.field) == (400, "bad spec", "spec")
    err = sdk._decode_error(502, "Bad Gateway", b"<html>upstream down</html>")
    assert err.message == "HTTP 502 Bad Gateway: <html>upstream down</html>" and err.field is None


def test_unreachable_coordinator_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert tn.main(["--url", url, "task", "list"]) == 3
    err = capsys.readouterr().err
    assert url in err and "--url" in err and "TN_URL" in err


# ---- rendering ---------------------------------------------------------------------------


def test_progress_line_matches_the_documented_format() -> None:
    line = render.task_progress_line(task_info(), 41.2)
    assert line == (
        "[#####-----] 53% 530/1000 chunks · 12 leased · 0 failed · 41.2 chunks/s · ETA 11s"
    )


def test_progress_line_edge_cases() -> None:
    assert render.task_progress_line(task_info(), None).endswith("-- chunks/s · ETA --")
    assert render.task_progress_line(task_info(), 0.0).endswith("0.0 chunks/s · ETA --")
    done = task_info(state="completed", chunks_done=1000, chunks_leased=0)
    assert render.task_progress_line(done, 3.0) == (
        "[##########] 100% 1000/1000 chunks · 0 leased · 0 failed · completed"
    )
    empty = task_info(chunks_total=0, chunks_done=0, chunks_leased=0)
    assert render.task_progress_line(empty, None).startswith("[##########] 100% 0/0 chunks")
    assert render.bar(999, 1000) == "[#########-]"
    assert render.percent(999, 1000) == 99


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (11.4, "11s"), (59.6, "1m00s"), (185, "3m05s"), (7620, "2h07m")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert render.format_duration(seconds) == text


def test_format_bytes_and_transfer_line() -> None:
    assert render.format_bytes(512) == "512 B"
    assert render.format_bytes(1536) == "1.5 KiB"
    assert render.format_bytes(200 << 20) == "200.0 MiB"
    line = render.transfer_line("uploading", 200 << 20, 500 << 20, width=10)
    assert line == "uploading [####------] 40% 200.0 MiB/500.0 MiB"
    assert render.transfer_line("downloading", 12 << 20, None) == "downloading 12.0 MiB"


def test_rate_meter_uses_a_sliding_window() -> None:
    meter = render.RateMeter(window_s=10, min_span_s=0.5)
    assert meter.update(0.0, 0) is None
    assert meter.update(0.2, 10) is None
    assert meter.update(2.0, 100) == pytest.approx(50.0)
    for t in range(3, 30):
        rate = meter.update(float(t), 100 + (t - 2) * 5)
    assert rate == pytest.approx(5.0)


def test_status_line_redraws_on_a_tty() -> None:
    out = io.StringIO()
    line = render.StatusLine(out, tty=True)
    line.show("a", 0.0)
    line.show("b", 0.05)  # throttled, kept
    line.show("c", 0.2)
    line.finish(0.3)
    assert out.getvalue() == "\ra\x1b[K\rc\x1b[K\n"


def test_status_line_prints_a_line_per_second_otherwise() -> None:
    out = io.StringIO()
    line = render.StatusLine(out, tty=False)
    for i in range(25):
        line.show(f"step {i}", i * 0.1)
    line.show("done", 2.45, force=True)
    line.finish()
    assert out.getvalue().splitlines() == ["step 0", "step 10", "step 20", "done"]


def test_tables_and_summary() -> None:
    tasks = [task_info(), task_info(id="t22", name="", state="completed", items_done=7)]
    lines = render.task_table(tasks).splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATE", "CHUNKS", "ITEMS", "DONE"]
    assert lines[1].split() == ["t1", "demo", "running", "530/1000", "5300"]
    assert lines[2].split() == ["t22", "-", "completed", "530/1000", "7"]
    assert lines[2].endswith("   7")  # numbers are right-aligned
    chunk = {"index": 3, "state": "failed", "attempts": 3, "worker": None, "error": "boom"}
    assert render.chunk_table([chunk]).splitlines()[1].split() == ["3", "failed", "3", "-", "boom"]
    summary = render.task_summary(task_info())
    assert "530/1000 done · 12 leased · 458 pending · 0 failed" in summary
    assert "2023-11-14 22:13:20Z" in summary and "requires gpu" in summary


# ---- the SDK against a fake REST server --------------------------------------------------


class FakeApi(BaseHTTPRequestHandler):
    """Just enough of the REST contract to exercise the SDK's plumbing."""

    results = b"[" + b",".join(b'{"n": %d}' % i for i in range(50_000)) + b"]"
    upload_bytes_max = 8 << 20
    seen: list[dict[str, Any]]  # class attribute set per test

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, status: int, doc: Any) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

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
