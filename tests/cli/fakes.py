"""Helpers of the ``tn`` tests: sample task views, a free port, a multipart parser, and a
base for small stdlib HTTP fakes of the coordinator's REST API."""

from __future__ import annotations

import io
import json
import socket
from http.server import BaseHTTPRequestHandler
from typing import Any

import python_multipart

from client import sdk


class JsonHandler(BaseHTTPRequestHandler):
    """A quiet handler that answers JSON; fakes subclass it with their ``do_*`` methods."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, status: int, doc: Any) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)



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
