"""Uploads are hostile: every rejection must be specific enough for a customer to act on."""

from __future__ import annotations

import io
import stat
import struct
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from coordinator.uploads import (
    UploadError,
    UploadLimits,
    code_digest,
    extract_code_zip,
    parse_code,
    parse_dataset,
)

LIMITS = UploadLimits()
MAIN = b"def process(item):\n    return item\n"

Entry = tuple[str | zipfile.ZipInfo, bytes]


def make_zip(*entries: Entry, compress: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compress) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def info(name: str, mode: int) -> zipfile.ZipInfo:
    zi = zipfile.ZipInfo(name)
    zi.external_attr = mode << 16
    return zi


def central_entries(data: bytes) -> list[int]:
    """Offsets of every central directory header in a zip."""
    out, at = [], data.find(b"PK\x01\x02")
    while at >= 0:
        out.append(at)
        at = data.find(b"PK\x01\x02", at + 4)
    return out


def patch_central(data: bytes, entry: int, offset: int, fmt: str, value: int) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, central_entries(data)[entry] + offset, value)
    return bytes(b)


def code_error(filename: str, data: bytes, limits: UploadLimits = LIMITS) -> str:
    with pytest.raises(UploadError) as e:
        parse_code(filename, data, limits)
    assert e.value.field == "code"
    assert str(e.value) == e.value.message
    return e.value.message


def data_error(filename: str, data: bytes, limits: UploadLimits = LIMITS) -> str:
    with pytest.raises(UploadError) as e:
        parse_dataset(filename, data, limits)
    assert e.value.field == "data"
    return e.value.message


# ---- single .py files ------------------------------------------------------------------


def test_single_py_becomes_main() -> None:
    bundle = parse_code("job.PY", MAIN, LIMITS)
    assert bundle.files == {"main.py": MAIN}
    assert bundle.digest == code_digest({"main.py": MAIN})
    assert len(bundle.digest) == 64


@pytest.mark.parametrize(
    "source",
    [
        "def process_chunk(items):\n    return items\n",
        "async def process(item):\n    return item\n",
        "from json import dumps as process\n",
        "import os\nprocess = os.fspath\n",
        "try:\n    import x\nexcept ImportError:\n    def process(i):\n        return i\n",
        "if True:\n    def process(i):\n        return i\n",
        "import re\nPAT = '\\d+'\ndef process(i):\n    return i\n",  # invalid escape warning
        "\ufeffdef process(i):\n    return i\n",
    ],
)
def test_entry_point_forms_accepted(source: str) -> None:
    parse_code("main.py", source.encode(), LIMITS)


def test_entry_point_missing() -> None:
    msg = code_error("main.py", b"def helper(x):\n    def process(y):\n        return y\n")
    assert "process(item)" in msg and "process_chunk(items)" in msg and "main.py" in msg


def test_syntax_error_reports_line() -> None:
    msg = code_error("main.py", b"import os\n\ndef process(item:\n    return item\n")
    assert "main.py line 3" in msg and "syntax error" in msg


def test_compile_time_error_reports_line() -> None:
    msg = code_error("main.py", b"def process(i):\n    return i\nreturn 1\n")
    assert "line 3" in msg


def test_not_utf8() -> None:
    msg = code_error("main.py", b"# caf\xe9\ndef process(i):\n    return i\n")
    assert "UTF-8" in msg and "byte 5" in msg


def test_null_bytes() -> None:
    msg = code_error("main.py", b"def process(i):\n    return i\x00\n")
    assert msg.startswith("main.py") and "null" in msg and "None" not in msg


def test_empty_oversized_and_wrong_extension() -> None:
    assert "empty" in code_error("main.py", b"")
    msg = code_error("main.py", MAIN, UploadLimits(code_bytes_max=10))
    assert str(len(MAIN)) in msg and "limit of 10 bytes" in msg
    msg = code_error("main.txt", MAIN)
    assert "'main.txt'" in msg and ".py" in msg and ".zip" in msg


# ---- zips ------------------------------------------------------------------------------


def test_zip_with_packages_and_dirs() -> None:
    data = make_zip(
        ("pkg/", b""),
        ("main.py", b"from pkg.util import process\n"),
        ("pkg/__init__.py", b""),
        ("./pkg/util.py", MAIN),
        ("__MACOSX/._main.py", b"\x00\x05\x16\x07"),
    )
    bundle = parse_code("bundle.zip", data, LIMITS)
    assert sorted(bundle.files) == ["main.py", "pkg/__init__.py", "pkg/util.py"]
    assert bundle.digest == code_digest(dict(reversed(list(bundle.files.items()))))


def test_digest_depends_on_content_and_paths() -> None:
    a = code_digest({"main.py": MAIN, "b.py": b"x"})
    assert a != code_digest({"main.py": MAIN, "b.py": b"y"})
    assert a != code_digest({"main.py": MAIN, "c.py": b"x"})
    assert code_digest({"ab": b"c"}) != code_digest({"a": b"bc"})


def test_zip_without_main() -> None:
    msg = code_error("c.zip", make_zip(("lib.py", MAIN)))
    assert "no main.py at its root" in msg


def test_zip_with_nested_main_hints_at_folder() -> None:
    msg = code_error("c.zip", make_zip(("project/main.py", MAIN)))
    assert "project/main.py" in msg and "contents" in msg


def test_zip_main_checked_like_single_file() -> None:
    msg = code_error("c.zip", make_zip(("main.py", b"x = (\n")))
    assert "main.py line 1" in msg


def test_not_a_zip() -> None:
    assert "not a valid zip" in code_error("c.zip", b"PK\x03\x04 definitely not")


def test_too_many_members() -> None:
    data = make_zip(("main.py", MAIN), *((f"m{i}.py", b"") for i in range(5)))
    msg = code_error("c.zip", data, UploadLimits(zip_members_max=3))
    assert "6 entries" in msg and "limit of 3" in msg


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("/etc/cron.d/evil", "absolute path"),
        ("../evil.py", "'..'"),
        ("pkg/../../evil.py", "'..'"),
        ("pkg\\..\\evil.py", "backslash"),
        ("C:/evil.py", "drive letter"),
        ("evil\x01.py", "control characters"),
        ("a" * 300 + ".py", "too long"),
    ],
)
def test_unsafe_names(name: str, needle: str) -> None:
    msg = code_error("c.zip", make_zip(("main.py", MAIN), (name, b"x")))
    assert needle in msg


def test_symlink_rejected() -> None:
    data = make_zip(("main.py", MAIN), (info("link.py", stat.S_IFLNK | 0o777), b"/etc/passwd"))
    msg = code_error("c.zip", data)
    assert "link.py" in msg and "symlink" in msg


def test_special_file_rejected() -> None:
    data = make_zip(("main.py", MAIN), (info("fifo", stat.S_IFIFO | 0o644), b""))
    msg = code_error("c.zip", data)
    assert "fifo" in msg and "not a regular file" in msg


def test_duplicate_names_rejected() -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        data = make_zip(("main.py", MAIN), ("main.py", b"def process_chunk(x): pass\n"))
    msg = code_error("c.zip", data)
    assert "main.py twice" in msg


def test_names_differing_in_case_rejected() -> None:
    msg = code_error("c.zip", make_zip(("main.py", MAIN), ("Util.py", b""), ("util.py", b"")))
    assert "util.py" in msg and "Util.py" in msg and "case" in msg


def test_file_and_folder_clash() -> None:
    msg = code_error("c.zip", make_zip(("main.py", MAIN), ("lib", b""), ("lib/x.py", b"")))
    assert "lib is both a file and a folder" in msg


def test_encrypted_member_rejected() -> None:
    data = make_zip(("main.py", MAIN), ("secret.py", b"x = 1\n"))
    data = patch_central(data, 1, 8, "<H", 0x1)  # general purpose flag: encrypted
    msg = code_error("c.zip", data)
    assert "secret.py" in msg and "encrypted" in msg


def test_zip_bomb_rejected_quickly() -> None:
    zeros = bytes(50 << 20)
    data = make_zip(("main.py", MAIN), ("bomb.bin", zeros))
    assert len(data) < 200_000
    t = time.perf_counter()
    msg = code_error("c.zip", data)
    assert time.perf_counter() - t < 1.0
    assert "bomb.bin" in msg and "zip bomb" in msg and "limit of 100x" in msg


def test_total_uncompressed_limit() -> None:
    data = make_zip(("main.py", MAIN), ("a.bin", bytes(600)), ("b.bin", bytes(600)))
    msg = code_error("c.zip", data, UploadLimits(zip_uncompressed_bytes_max=1000))
    assert "more than 1000 bytes" in msg


def test_ratio_floor_allows_small_compressible_files() -> None:
    data = make_zip(("main.py", MAIN + b"#" * 50_000))
    parse_code("c.zip", data, LIMITS)
    msg = code_error("c.zip", data, UploadLimits(zip_ratio_floor_bytes=0))
    assert "zip entry main.py expands" in msg


def test_overall_ratio_checked() -> None:
    entries = [(f"f{i}.txt", bytes(20_000)) for i in range(100)]
    data = make_zip(("main.py", MAIN), *entries)
    limits = UploadLimits(zip_ratio_floor_bytes=100_000, zip_ratio_max=20)
    assert "the zip as a whole expands" in code_error("c.zip", data, limits)


def test_header_understating_size_is_caught_while_reading() -> None:
    """The central directory claims 1000 bytes for 50 MB of zeros: declared checks pass."""
    data = make_zip(("main.py", MAIN), ("liar.bin", bytes(50 << 20)))
    data = patch_central(data, 1, 24, "<I", 1000)  # uncompressed size field
    t = time.perf_counter()
    msg = code_error("c.zip", data)
    assert time.perf_counter() - t < 1.0  # we never inflated the 50 MB
    assert "liar.bin" in msg


def test_header_overstating_size_is_caught() -> None:
    data = make_zip(("main.py", MAIN), ("short.py", b"x = 1\n" * 10))
    data = patch_central(data, 1, 24, "<I", 5000)
    msg = code_error("c.zip", data)
    assert "short.py" in msg


def test_extract_code_zip(tmp_path: Path) -> None:
    data = make_zip(("main.py", MAIN), ("pkg/util.py", b"X = 1\n"), ("pkg/", b""))
    extract_code_zip(data, tmp_path / "code", LIMITS)
    assert (tmp_path / "code" / "main.py").read_bytes() == MAIN
    assert (tmp_path / "code" / "pkg" / "util.py").read_bytes() == b"X = 1\n"


def test_extract_code_zip_rejects_hostile_zip(tmp_path: Path) -> None:
    data = make_zip(("main.py", MAIN), ("../../escape.py", b"x"))
    with pytest.raises(UploadError, match=r"'\.\.'"):
        extract_code_zip(data, tmp_path / "code", LIMITS)
    assert not (tmp_path / "escape.py").exists()
    assert not (tmp_path / "code").exists()


def test_extract_code_zip_does_not_follow_planted_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    file_link, dir_link = tmp_path / "a", tmp_path / "b"
    file_link.mkdir()
    (file_link / "main.py").symlink_to(outside / "main.py")
    dir_link.mkdir()
    (dir_link / "pkg").symlink_to(outside)
    data = make_zip(("main.py", MAIN), ("pkg/util.py", b"X = 1\n"))
    for dest in (file_link, dir_link):
        with pytest.raises(OSError):
            extract_code_zip(data, dest, LIMITS)
    assert list(outside.iterdir()) == []


# ---- datasets --------------------------------------------------------------------------


def test_json_array() -> None:
    assert parse_dataset("d.json", b'[1, "a", {"b": [null]}]', LIMITS) == [1, "a", {"b": [None]}]


def test_json_must_be_array() -> None:
    msg = data_error("d.json", b'{"items": [1]}')
    assert "JSON array" in msg and "dict" in msg and ".jsonl" in msg


def test_json_malformed_reports_line() -> None:
    msg = data_error("d.json", b"[\n1,\n2,\n]")
    assert "line 4" in msg and "trailing comma" in msg


def test_json_truncated() -> None:
    assert "truncated" in data_error("d.json", b"[1, 2")


def test_jsonl_and_ndjson() -> None:
    body = b'{"a": 1}\n\n  \n[2]\r\n"three"\n'
    assert parse_dataset("d.jsonl", body, LIMITS) == [{"a": 1}, [2], "three"]
    assert parse_dataset("d.ndjson", body, LIMITS) == [{"a": 1}, [2], "three"]


def test_jsonl_bad_line_number() -> None:
    msg = data_error("d.jsonl", b'{"a": 1}\n\n{"a": 2}\n{"a": 3,}\n{"a": 4}\n')
    assert "line 4" in msg and "one JSON value" in msg


def test_jsonl_two_values_on_a_line() -> None:
    assert "line 2" in data_error("d.jsonl", b"1\n2 3\n")


def test_csv_with_bom() -> None:
    body = '\ufeffname,age\r\nAda,36\r\n"Lovelace, A","3""6"\r\n'.encode()
    assert parse_dataset("people.csv", body, LIMITS) == [
        {"name": "Ada", "age": "36"},
        {"name": "Lovelace, A", "age": '3"6'},
    ]


def test_csv_values_stay_strings_and_blank_lines_skipped() -> None:
    items = parse_dataset("d.csv", b"x,y\n1,2\n\n3,\n", LIMITS)
    assert items == [{"x": "1", "y": "2"}, {"x": "3", "y": ""}]


def test_tsv() -> None:
    assert parse_dataset("d.tsv", b"a\tb\n1\t2\n", LIMITS) == [{"a": "1", "b": "2"}]


def test_csv_wrong_field_count() -> None:
    msg = data_error("d.csv", b"a,b\n1,2\n3,4,5\n")
    assert "line 3" in msg and "3 fields" in msg and "header has 2" in msg


def test_csv_duplicate_header() -> None:
    assert "'a'" in data_error("d.csv", b"a,b,a\n1,2,3\n")


def test_csv_not_utf8() -> None:
    assert "line 2" in data_error("d.csv", b"name\ncaf\xe9\n")


def test_csv_header_only_has_no_items() -> None:
    assert data_error("d.csv", b"a,b\n").startswith("the dataset has no items; ")


def test_empty_array_has_no_items() -> None:
    assert data_error("d.json", b"[]").startswith("the dataset has no items; ")
    assert data_error("d.jsonl", b"\n\n \n").startswith("the dataset file is empty")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"  [1, 2]", [1, 2]),
        (b'{"a": 1}\n{"a": 2}\n', [{"a": 1}, {"a": 2}]),
        (b"a,b\n1,2\n", [{"a": "1", "b": "2"}]),
    ],
)
def test_sniffing_unknown_extensions(body: bytes, expected: list[Any]) -> None:
    assert parse_dataset("upload.txt", body, LIMITS) == expected
    assert parse_dataset("noextension", body, LIMITS) == expected


def test_dataset_size_limits() -> None:
    msg = data_error("d.json", b"[1, 2, 3]", UploadLimits(data_bytes_max=5))
    assert "9 bytes" in msg and "limit of 5" in msg
    for name, body in [("d.json", b"[1,2,3]"), ("d.jsonl", b"1\n2\n3\n"), ("d.csv", b"a\n1\n2\n3")]:
        assert "more than 2 items" in data_error(name, body, UploadLimits(items_max=2))


def test_item_size_limit_names_the_item() -> None:
    body = b'["small", "' + b"x" * 200 + b'", "small"]'
    msg = data_error("d.json", body, UploadLimits(item_bytes_max=100))
    assert "item 1 is" in msg and "limit of 100 bytes" in msg
    assert len(parse_dataset("d.json", body, UploadLimits(item_bytes_max=300))) == 3
