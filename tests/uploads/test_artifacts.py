"""Task artifacts: chunk round trips, crash safety, the code zip, and write speed."""

from __future__ import annotations

import math
import tempfile
import time
import zipfile
from io import BytesIO
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import coordinator.artifacts as artifacts
from coordinator.artifacts import TaskArtifacts
from coordinator.uploads import CodeBundle, UploadLimits, code_digest, extract_code_zip

MAIN = b"def process(item):\n    return item\n"


def bundle(files: dict[str, bytes] | None = None) -> CodeBundle:
    files = {"main.py": MAIN, "pkg/util.py": b"X = 1\n"} if files is None else files
    return CodeBundle(digest=code_digest(files), files=files)


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(items=st.lists(json_values, max_size=60), chunk_size=st.integers(1, 25))
def test_write_read_round_trip(items: list[Any], chunk_size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        task = TaskArtifacts(Path(tmp) / "tasks" / "t1")
        n = task.write(bundle(), items, chunk_size)
        assert n == math.ceil(len(items) / chunk_size)
        assert task.chunk_count() == n
        decoded = [msgspec.msgpack.decode(task.read_chunk(i)) for i in range(n)]
        assert [x for chunk in decoded for x in chunk] == items
        assert all(len(c) == chunk_size for c in decoded[:-1])
        assert task.item_counts() == [len(c) for c in decoded]
        task.close()
        again = TaskArtifacts(task.root)
        assert [again.read_chunk(i) for i in range(n)] == [task.read_chunk(i) for i in range(n)]
        again.close()
        task.close()


def test_layout_and_index(tmp_path: Path) -> None:
    task = TaskArtifacts(tmp_path / "tasks" / "t1")
    assert not (tmp_path / "tasks").exists()  # nothing touched before write
    assert task.write(bundle(), list(range(10)), 4) == 3
    root = tmp_path / "tasks" / "t1"
    assert (root / "code" / "main.py").read_bytes() == MAIN
    assert (root / "code" / "pkg" / "util.py").read_bytes() == b"X = 1\n"
    assert task.code_dir() == root / "code"
    idx = (root / "chunks.idx").read_bytes()
    offsets = [int.from_bytes(idx[i : i + 8], "little") for i in range(0, len(idx), 8)]
    assert len(offsets) == 4 and offsets[0] == 0
    assert offsets[-1] == (root / "chunks.bin").stat().st_size
    assert msgspec.msgpack.decode(task.read_chunk(2)) == [8, 9]
    assert task.item_count(1) == 4
    assert leftovers(tmp_path / "tasks") == []
    task.close()


def test_large_chunks_use_wide_array_headers(tmp_path: Path) -> None:
    task = TaskArtifacts(tmp_path / "t")
    task.write(bundle(), list(range(70_000)), 65_536)
    assert task.item_counts() == [65_536, 70_000 - 65_536]
    task.close()


def test_out_of_range_chunks(tmp_path: Path) -> None:
    task = TaskArtifacts(tmp_path / "t")
    task.write(bundle(), [1, 2, 3], 2)
    for bad in (-1, 2, 10**9):
        with pytest.raises(IndexError, match="2 chunks"):
            task.read_chunk(bad)
    task.close()


def test_bad_chunk_size_and_double_write(tmp_path: Path) -> None:
    task = TaskArtifacts(tmp_path / "t")
    with pytest.raises(ValueError, match="chunk_size"):
        task.write(bundle(), [1], 0)
    task.write(bundle(), [1], 1)
    with pytest.raises(FileExistsError):
        task.write(bundle(), [1], 1)


def test_crash_mid_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(items: list[Any], chunk_size: int) -> tuple[bytearray, bytes]:
        raise OSError("disk full")

    monkeypatch.setattr(artifacts, "encode_chunks", boom)
    task = TaskArtifacts(tmp_path / "t")
    with pytest.raises(OSError, match="disk full"):
        task.write(bundle(), [1, 2], 1)
    assert list(tmp_path.iterdir()) == []


def test_stale_staging_is_swept(tmp_path: Path) -> None:
    stale = tmp_path / ".t.tmp-deadbeef"
    (stale / "code").mkdir(parents=True)
    (tmp_path / ".other.tmp-1").mkdir()
    TaskArtifacts(tmp_path / "t").write(bundle(), [1], 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-1", "t"]


def test_remove(tmp_path: Path) -> None:
    task = TaskArtifacts(tmp_path / "t")
    task.write(bundle(), [1, 2, 3], 1)
    task.read_chunk(0)
    task.code_zip()
    task.remove()
    assert list(tmp_path.iterdir()) == []
    task.remove()  # idempotent
    with pytest.raises(FileNotFoundError):
        task.chunk_count()


def test_code_zip_is_deterministic_and_unpacks(tmp_path: Path) -> None:
    a, b = TaskArtifacts(tmp_path / "a"), TaskArtifacts(tmp_path / "b")
    files = {"main.py": MAIN, "z.py": b"", "pkg/a/b.py": b"B = 2\n"}
    a.write(bundle(files), [1], 1)
    b.write(bundle(dict(reversed(files.items()))), [2], 1)
    time.sleep(0.01)  # different mtimes must not matter
    (tmp_path / "b" / "code" / "z.py").touch()
    data = a.code_zip()
    assert data == b.code_zip() == (tmp_path / "a" / "code.zip").read_bytes()
    assert TaskArtifacts(tmp_path / "a").code_zip() == data  # read back from the cache file
    names = [i.filename for i in zipfile.ZipFile(BytesIO(data)).infolist()]
    assert names == sorted(files)
    extract_code_zip(data, tmp_path / "unpacked", UploadLimits())
    got = {
        p.relative_to(tmp_path / "unpacked").as_posix(): p.read_bytes()
        for p in (tmp_path / "unpacked").rglob("*")
        if p.is_file()
    }
    assert code_digest(got) == code_digest(files)


def test_code_zip_stores_very_compressible_files(tmp_path: Path) -> None:
    """Our own zip must pass a worker's zip-bomb check."""
    files = {"main.py": MAIN, "table.bin": bytes(3 << 20)}
    task = TaskArtifacts(tmp_path / "t")
    task.write(bundle(files), [1], 1)
    data = task.code_zip()
    kinds = {i.filename: i.compress_type for i in zipfile.ZipFile(BytesIO(data)).infolist()}
    assert kinds == {"main.py": zipfile.ZIP_DEFLATED, "table.bin": zipfile.ZIP_STORED}
    extract_code_zip(data, tmp_path / "w", UploadLimits())
    assert (tmp_path / "w" / "table.bin").stat().st_size == 3 << 20


def test_code_zip_before_write(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="write the task first"):
        TaskArtifacts(tmp_path / "t").code_zip()


def test_million_one_item_chunks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = [{"i": i, "s": "x"} for i in range(1_000_000)]
    task = TaskArtifacts(tmp_path / "big")
    t0 = time.perf_counter()
    n = task.write(bundle(), items, 1)
    t1 = time.perf_counter()
    assert n == 1_000_000
    assert msgspec.msgpack.decode(task.read_chunk(999_999)) == [items[-1]]
    t2 = time.perf_counter()
    for i in range(0, n, 10):
        task.read_chunk(i)
    t3 = time.perf_counter()
    task.close()
    with capsys.disabled():
        print(
            f"\n[artifacts] write 1,000,000 one-item chunks: {t1 - t0:.3f} s; "
            f"100,000 read_chunk calls: {t3 - t2:.3f} s"
        )
