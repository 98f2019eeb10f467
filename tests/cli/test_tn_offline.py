"""``tn`` and ``client.sdk`` without a coordinator: parsing, multipart bodies, validation,
error formatting and rendering. (The SDK and ``watch`` against in-process fakes:
test_tn_fakes.py.)
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
from pathlib import Path

import pytest

from client import render, sdk, tn
from tests.cli.fakes import free_port, parse_multipart, task_info

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
