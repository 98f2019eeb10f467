"""On-disk storage of one task's code and chunked dataset.

Layout under ``root`` (``<data-dir>/tasks/<task_id>``)::

    code/        the code files, as uploaded (paths already validated)
    chunks.bin   chunk i is a MessagePack array of items[i*cs:(i+1)*cs]; chunks back to back
    chunks.idx   n_chunks + 1 little-endian uint64 offsets into chunks.bin
    code.zip     a deterministic zip of code/, built on first request

``write`` builds everything in a hidden sibling directory, fsyncs it and renames it to
``root``: after a crash the task is either complete or absent (stale staging directories are
swept by the next ``write`` or ``remove`` of the same task).
"""

from __future__ import annotations

import glob
import io
import mmap
import os
import shutil
import struct
import sys
import threading
import uuid
import zipfile
import zlib
from array import array
from pathlib import Path
from typing import Any

import msgspec

from coordinator.uploads import CodeBundle, write_files

_OFFSET = struct.Struct("<2Q")  # start and end of one chunk
_LAST = struct.Struct("<Q")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class TaskArtifacts:
    def __init__(self, root: Path, *, code_zip_ratio_max: int = 10) -> None:
        """Nothing on disk is touched until ``write`` or a read.

        ``code_zip_ratio_max``: members of code.zip that deflate better than this are
        stored uncompressed, so a worker's zip-bomb check never rejects our own zip.
        """
        self.root = root
        self.code_zip_ratio_max = code_zip_ratio_max
        self._lock = threading.Lock()
        self._bin: mmap.mmap | None = None
        self._idx: mmap.mmap | None = None
        self._count = -1
        self._zip: bytes | None = None

    # ---- writing ---------------------------------------------------------------------

    def write(self, code: CodeBundle, items: list[Any], chunk_size: int) -> int:
        """Store code and items in chunks of ``chunk_size``; return the number of chunks."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        if self.root.exists():
            raise FileExistsError(f"task artifacts already exist at {self.root}")
        self._sweep()
        self.root.parent.mkdir(parents=True, exist_ok=True)
        stage = self.root.parent / f".{self.root.name}.tmp-{uuid.uuid4().hex}"
        stage.mkdir()
        try:
            dirs = write_files(code.files, stage / "code")
            blob, offsets = encode_chunks(items, chunk_size)
            _write_synced(stage / "chunks.bin", blob)
            _write_synced(stage / "chunks.idx", offsets)
            for d in [*dirs, stage]:
                _fsync_dir(d)
            os.replace(stage, self.root)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        _fsync_dir(self.root.parent)
        return len(offsets) // 8 - 1

    # ---- reading ---------------------------------------------------------------------

    def chunk_count(self) -> int:
        self._open()
        return self._count

    def read_chunk(self, index: int) -> bytes:
        """The raw MessagePack array of chunk ``index``, exactly as stored."""
        self._open()
        if not 0 <= index < self._count:
            raise IndexError(f"chunk {index} out of range: the task has {self._count} chunks")
        assert self._idx is not None
        start, end = _OFFSET.unpack_from(self._idx, index * 8)
        if self._bin is None:
            return b""
        if not start <= end <= len(self._bin):
            raise ValueError(f"{self.root / 'chunks.idx'} is corrupt at chunk {index}")
        return self._bin[start:end]

    def item_count(self, index: int) -> int:
        """Number of items in chunk ``index``, read from its MessagePack array header."""
        self._open()
        if not 0 <= index < self._count or self._bin is None or self._idx is None:
            raise IndexError(f"chunk {index} out of range: the task has {self._count} chunks")
        start = _OFFSET.unpack_from(self._idx, index * 8)[0]
        return _array_len(self._bin[start : start + 5])

    def item_counts(self) -> list[int]:
        return [self.item_count(i) for i in range(self.chunk_count())]

    def code_dir(self) -> Path:
        return self.root / "code"

    def code_zip(self) -> bytes:
        """A deterministic zip of the code files, cached in memory and in root/code.zip."""
        if self._zip is not None:
            return self._zip
        path = self.root / "code.zip"
        if not self.code_dir().is_dir():
            raise FileNotFoundError(f"no code stored at {self.code_dir()}; write the task first")
        try:
            self._zip = path.read_bytes()
        except FileNotFoundError:
            data = build_code_zip(self.code_dir(), self.code_zip_ratio_max)
            tmp = path.with_name(f".code.zip.tmp-{uuid.uuid4().hex}")
            _write_synced(tmp, data)
            os.replace(tmp, path)
            _fsync_dir(self.root)
            self._zip = data
        return self._zip

    # ---- lifetime --------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            for m in (self._bin, self._idx):
                if m is not None:
                    m.close()
            self._bin = self._idx = None
            self._count = -1

    def remove(self) -> None:
        """Delete the task's files. Renamed away first, so a crash never leaves half a task."""
        self.close()
        self._zip = None
        if self.root.exists():
            grave = self.root.parent / f".{self.root.name}.del-{uuid.uuid4().hex}"
            os.replace(self.root, grave)
            shutil.rmtree(grave)
        self._sweep()

    def _sweep(self) -> None:
        """Delete staging and half-deleted directories left by a crash."""
        parent = self.root.parent
        if parent.is_dir():
            name = glob.escape(self.root.name)
            for kind in ("tmp", "del"):
                for stale in parent.glob(f".{name}.{kind}-*"):
                    shutil.rmtree(stale, ignore_errors=True)

    def _open(self) -> None:
        if self._count >= 0:
            return
        with self._lock:
            if self._count >= 0:
                return
            idx = _map(self.root / "chunks.idx")
            size = (self.root / "chunks.bin").stat().st_size
            if idx is None or len(idx) % 8 or _LAST.unpack_from(idx, len(idx) - 8)[0] != size:
                if idx is not None:
                    idx.close()
                raise ValueError(f"{self.root / 'chunks.idx'} does not match chunks.bin")
            self._bin = _map(self.root / "chunks.bin")
            self._idx = idx
            self._count = len(idx) // 8 - 1


def encode_chunks(items: list[Any], chunk_size: int) -> tuple[bytearray, bytes]:
    """All chunks back to back with one reusable encoder, and their little-endian offsets."""
    encoder = msgspec.msgpack.Encoder()
    blob = bytearray()
    offsets = array("Q", [0])
    if chunk_size == 1:
        # Fast path: a one-item chunk is the fixarray header 0x91 followed by the item.
        for item in items:
            blob.append(0x91)
            encoder.encode_into(item, blob, -1)
            offsets.append(len(blob))
    else:
        for start in range(0, len(items), chunk_size):
            encoder.encode_into(items[start : start + chunk_size], blob, -1)
            offsets.append(len(blob))
    if sys.byteorder != "little":
        offsets.byteswap()
    return blob, offsets.tobytes()


def build_code_zip(code_dir: Path, ratio_max: int) -> bytes:
    """Zip every file under ``code_dir`` in path order with fixed timestamps and modes."""
    files = sorted(
        (p.relative_to(code_dir).as_posix(), p) for p in code_dir.rglob("*") if p.is_file()
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, path in files:
            data = path.read_bytes()
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            packed = len(zlib.compress(data, 6))
            squeezed = len(data) > ratio_max * max(packed, 1)
            info.compress_type = zipfile.ZIP_STORED if squeezed else zipfile.ZIP_DEFLATED
            zf.writestr(info, data, compresslevel=6)
    return out.getvalue()


def _array_len(head: bytes) -> int:
    if head and 0x90 <= head[0] <= 0x9F:
        return head[0] & 0x0F
    if head[:1] == b"\xdc":
        return int.from_bytes(head[1:3], "big")
    if head[:1] == b"\xdd":
        return int.from_bytes(head[1:5], "big")
    raise ValueError("chunk does not start with a MessagePack array header")


def _map(path: Path) -> mmap.mmap | None:
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return None
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _write_synced(path: Path, data: bytes | bytearray) -> None:
    with path.open("xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":
        return  # Windows cannot open directories for fsync; NTFS journals renames
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
