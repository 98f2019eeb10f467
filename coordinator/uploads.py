"""Validation and parsing of what customers upload: their code and their dataset.

Everything here treats the upload as hostile. A bad upload raises ``UploadError``, whose
message is shown to the customer verbatim, so it names the problem and says what to do next.
The same zip checks guard workers unpacking the ``code.zip`` they download
(``extract_code_zip``).
"""

from __future__ import annotations

import ast
import codecs
import csv
import hashlib
import io
import os
import re
import stat
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

ENTRY_POINTS = ("process", "process_chunk")
_NAME_BYTES_MAX = 255  # one path component; what common filesystems allow
_PATH_BYTES_MAX = 1024  # a whole member path
_READ_BLOCK_BYTES = 64 << 10
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BYTE_POS = re.compile(r"\(byte (\d+)\)")
_MALFORMED = "JSON is malformed: "
_FIRST_BYTE = re.compile(rb"\s*(\S)")
_SKIPPED_ROOTS = ("__MACOSX",)  # resource forks added by macOS Finder; never code


class UploadError(Exception):
    """A rejected upload. ``message`` is shown to the customer verbatim (HTTP 400)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field  # "code", "data" or "spec"
        self.message = message


@dataclass(frozen=True)
class UploadLimits:
    code_bytes_max: int = 10 << 20
    data_bytes_max: int = 512 << 20
    zip_members_max: int = 1000
    zip_uncompressed_bytes_max: int = 100 << 20
    zip_ratio_max: int = 100  # uncompressed/compressed, per member and overall (zip bombs)
    zip_ratio_floor_bytes: int = 1 << 20  # ratios are checked only above this many bytes
    items_max: int = 10_000_000
    item_bytes_max: int = 1 << 20  # largest single item, MessagePack-encoded


@dataclass(frozen=True)
class CodeBundle:
    digest: str  # hex sha256 of code_digest(files)
    files: dict[str, bytes]  # relative posix path -> content; always contains "main.py"


def code_digest(files: dict[str, bytes]) -> str:
    """sha256 over length-prefixed (path, content) pairs in path order: unambiguous, stable."""
    h = hashlib.sha256()
    for path in sorted(files):
        for part in (path.encode(), files[path]):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.hexdigest()


# ---- code ------------------------------------------------------------------------------


def parse_code(filename: str, data: bytes, limits: UploadLimits) -> CodeBundle:
    """Check an uploaded ``.py`` file or ``.zip`` bundle; the result always has main.py."""
    if not data:
        raise UploadError("code", "the code upload is empty; upload a .py file or a .zip")
    if len(data) > limits.code_bytes_max:
        raise UploadError(
            "code",
            f"the code upload is {len(data)} bytes, over the limit of "
            f"{limits.code_bytes_max} bytes; remove data files from it and upload the "
            "data as the dataset instead",
        )
    suffix = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
    if suffix == ".py":
        files = {"main.py": data}
    elif suffix == ".zip":
        files = read_code_zip(data, limits)
        if "main.py" not in files:
            nested = sorted(p for p in files if p.endswith("/main.py"))
            hint = (
                f" (found {nested[0]}: zip the folder's contents, not the folder itself)"
                if nested
                else ""
            )
            raise UploadError(
                "code", f"the zip has no main.py at its root{hint}; add main.py and upload again"
            )
    else:
        raise UploadError(
            "code",
            f"cannot use code file {filename!r}: upload a single .py file or a .zip "
            "with main.py at its root",
        )
    check_main(files["main.py"])
    return CodeBundle(digest=code_digest(files), files=files)


def check_main(source: bytes) -> None:
    """main.py must be UTF-8, compile, and define process or process_chunk at top level."""
    try:
        text = source.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UploadError(
            "code", f"main.py is not valid UTF-8 (byte {e.start}); save it as UTF-8 and retry"
        ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. invalid escapes: the customer's business
            tree = ast.parse(text, filename="main.py")
            compile(tree, "main.py", "exec")
    except SyntaxError as e:
        where = "main.py" if e.lineno is None else f"main.py line {e.lineno}"
        raise UploadError(
            "code", f"{where}: syntax error: {e.msg}; fix it and upload again"
        ) from None
    except ValueError as e:  # e.g. null bytes in the source
        raise UploadError("code", f"main.py cannot be compiled ({e}); fix it and retry") from None
    if not _defines(tree.body, ENTRY_POINTS):
        raise UploadError(
            "code",
            "main.py must define process(item) or process_chunk(items) at its top level; "
            "neither was found",
        )


def _defines(body: list[ast.stmt], names: tuple[str, ...]) -> bool:
    """Whether module-level code (including if/try/with blocks) binds one of ``names``."""
    for node in body:
        match node:
            case ast.FunctionDef(name=n) | ast.AsyncFunctionDef(name=n) | ast.ClassDef(name=n):
                if n in names:
                    return True
            case ast.Assign(targets=targets):
                if any(isinstance(t, ast.Name) and t.id in names for t in targets):
                    return True
            case ast.AnnAssign(target=ast.Name(id=n), value=v) if v is not None:
                if n in names:
                    return True
            case ast.Import(names=aliases) | ast.ImportFrom(names=aliases):
                if any((a.asname or a.name) in names for a in aliases):
                    return True
            case ast.If() | ast.For() | ast.While() | ast.With() | ast.Try() | ast.TryStar():
                blocks = [getattr(node, f, []) for f in ("body", "orelse", "finalbody")]
                blocks += [h.body for h in getattr(node, "handlers", [])]
                if any(_defines(b, names) for b in blocks):
                    return True
    return False


# ---- zips ------------------------------------------------------------------------------


def read_code_zip(data: bytes, limits: UploadLimits, field: str = "code") -> dict[str, bytes]:
    """Every regular file of a zip, by normalised path, after checking it is safe to unpack."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError):
        raise UploadError(
            field, "the code upload is not a valid zip archive; re-create it"
        ) from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.zip_members_max:
            raise UploadError(
                field,
                f"the zip has {len(infos)} entries, over the limit of {limits.zip_members_max}; "
                "leave out files main.py does not need",
            )
        members = _plan_members(infos, limits, len(data), field)
        files: dict[str, bytes] = {}
        total = 0
        for path, info in members:
            files[path] = _read_member(zf, info, path, limits, total, field)
            total += len(files[path])
    _check_ratio(total, len(data), "the zip as a whole", limits, field)
    return files


def _plan_members(
    infos: list[zipfile.ZipInfo], limits: UploadLimits, archive_bytes: int, field: str
) -> list[tuple[str, zipfile.ZipInfo]]:
    """Check every entry's name, type, flags and declared sizes; return the files to read."""
    members: list[tuple[str, zipfile.ZipInfo]] = []
    seen: dict[str, str] = {}  # casefolded path -> path
    dirs: set[str] = set()
    declared = 0
    for info in infos:
        path = check_member_path(info.filename, field)
        if path.split("/", 1)[0] in _SKIPPED_ROOTS:
            continue
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UploadError(field, f"zip entry {path} is a symlink; replace it with the file")
        if info.is_dir() or stat.S_ISDIR(mode) or info.external_attr & 0x10:
            dirs.add(path)
            continue
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            raise UploadError(field, f"zip entry {path} is not a regular file; remove it")
        if info.flag_bits & 0x1:
            raise UploadError(field, f"zip entry {path} is encrypted; zip it without a password")
        key = path.casefold()
        if key in seen:
            what = "twice" if seen[key] == path else f"and as {seen[key]} (differs only in case)"
            raise UploadError(field, f"the zip contains {path} {what}; keep only one")
        seen[key] = path
        dirs.update(str(p) for p in PurePosixPath(path).parents if str(p) != ".")
        declared += info.file_size
        if declared > limits.zip_uncompressed_bytes_max:
            raise _too_big(limits, field)
        _check_ratio(info.file_size, info.compress_size, f"zip entry {path}", limits, field)
        members.append((path, info))
    _check_ratio(declared, archive_bytes, "the zip as a whole", limits, field)
    clash = sorted(dirs & set(seen.values()))
    if clash:
        raise UploadError(field, f"{clash[0]} is both a file and a folder in the zip; rename one")
    return members


def check_member_path(name: str, field: str = "code") -> str:
    """Normalise a zip member name to a safe relative posix path, or raise UploadError."""
    shown = repr(name)
    if "\\" in name or _DRIVE.match(name) or ":" in name:
        raise UploadError(
            field, f"zip entry {shown} has a backslash or drive letter; use plain relative paths"
        )
    if name.startswith("/"):
        raise UploadError(field, f"zip entry {shown} is an absolute path; use relative paths")
    if _CONTROL.search(name):
        raise UploadError(field, f"zip entry {shown} has control characters in its name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UploadError(field, f"zip entry {shown} contains a '..' component; remove it")
    if not parts:
        raise UploadError(field, f"zip entry {shown} has an empty name; remove it")
    path = "/".join(parts)
    if len(path.encode()) > _PATH_BYTES_MAX or any(
        len(p.encode()) > _NAME_BYTES_MAX for p in parts
    ):
        raise UploadError(field, f"zip entry {shown} has a name that is too long; shorten it")
    return path


def _check_ratio(size: int, packed: int, what: str, limits: UploadLimits, field: str) -> None:
    if size > limits.zip_ratio_floor_bytes and size > limits.zip_ratio_max * max(packed, 1):
        raise UploadError(
            field,
            f"{what} expands {size // max(packed, 1)}x, over the limit of "
            f"{limits.zip_ratio_max}x, which looks like a zip bomb; upload the files stored "
            "or less repetitive",
        )


def _too_big(limits: UploadLimits, field: str) -> UploadError:
    return UploadError(
        field,
        f"the zip unpacks to more than {limits.zip_uncompressed_bytes_max} bytes; "
        "leave out large files and upload data as the dataset instead",
    )


def _read_member(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    path: str,
    limits: UploadLimits,
    total: int,
    field: str,
) -> bytes:
    """Read one member, enforcing sizes as bytes arrive: headers may lie."""
    out = bytearray()
    try:
        with zf.open(info) as f:
            while block := f.read(_READ_BLOCK_BYTES):
                out += block
                if len(out) > info.file_size:
                    raise UploadError(
                        field,
                        f"zip entry {path} holds more data than its header says; re-create the zip",
                    )
                if total + len(out) > limits.zip_uncompressed_bytes_max:
                    raise _too_big(limits, field)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        raise UploadError(field, f"zip entry {path} is corrupt ({e}); re-create the zip") from None
    except (NotImplementedError, RuntimeError) as e:
        raise UploadError(
            field, f"zip entry {path} cannot be read ({e}); zip it with plain deflate"
        ) from None
    if len(out) != info.file_size:
        raise UploadError(
            field, f"zip entry {path} is shorter than its header says; re-create the zip"
        )
    return bytes(out)


def write_files(files: dict[str, bytes], dest: Path) -> list[Path]:
    """Write validated relative paths under ``dest`` without following symlinks.

    Returns every directory created or used (``dest`` last) so callers can fsync them.
    """
    dest.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_BINARY", 0)
    dirs: set[Path] = set()
    for name in sorted(files):
        rel = check_member_path(name)
        target = dest.joinpath(*rel.split("/"))
        parent = dest
        for part in rel.split("/")[:-1]:
            parent = parent / part
            if parent not in dirs:
                parent.mkdir(exist_ok=True)
                if parent.is_symlink() or not parent.is_dir():
                    raise OSError(f"refusing to write through {parent}: not a plain directory")
                dirs.add(parent)
        fd = os.open(target, flags, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(files[name])
            f.flush()
            os.fsync(f.fileno())
    return [*sorted(dirs, key=lambda p: -len(p.parts)), dest]


def extract_code_zip(data: bytes, dest: Path, limits: UploadLimits) -> None:
    """Unpack a downloaded code.zip into ``dest`` with every check ``parse_code`` makes."""
    files = read_code_zip(data, limits)
    if "main.py" not in files:
        raise UploadError("code", "the code zip has no main.py at its root")
    write_files(files, dest)


# ---- datasets --------------------------------------------------------------------------


def parse_dataset(filename: str, data: bytes, limits: UploadLimits) -> list[Any]:
    """Parse a JSON array, JSON Lines or CSV dataset into a list of items."""
    if not data or data.isspace():  # (no .strip(): that would copy up to 512 MiB)
        raise UploadError("data", "the dataset file is empty; upload .json, .jsonl or .csv")
    if len(data) > limits.data_bytes_max:
        raise UploadError(
            "data",
            f"the dataset is {len(data)} bytes, over the limit of {limits.data_bytes_max} "
            "bytes; split it into several tasks",
        )
    data = data.removeprefix(codecs.BOM_UTF8)
    suffix = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
    if suffix not in (".json", ".jsonl", ".ndjson", ".csv", ".tsv"):
        m = _FIRST_BYTE.match(data)
        head = m.group(1) if m else b""
        suffix = ".json" if head == b"[" else ".jsonl" if head == b"{" else ".csv"
    if suffix == ".json":
        items = _parse_json(data)
    elif suffix in (".jsonl", ".ndjson"):
        items = _parse_jsonl(data, limits)
    else:
        items = _parse_csv(data, limits, "\t" if suffix == ".tsv" else ",")
    if not items:
        raise UploadError("data", "the dataset has no items; add at least one and upload again")
    if len(items) > limits.items_max:
        raise _too_many(limits)
    _check_item_sizes(items, limits)
    return items


def _parse_json(data: bytes) -> list[Any]:
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError as e:
        raise UploadError("data", f"the JSON dataset is malformed: {_where(e, data)}") from None
    except RecursionError:  # msgspec's depth limit (about 1000), not DecodeError
        raise _too_deep("the JSON dataset") from None
    if not isinstance(value, list):
        raise UploadError(
            "data",
            f"a .json dataset must be a JSON array of items, not {type(value).__name__}; "
            "wrap the items in [ ] or upload one item per line as .jsonl",
        )
    return value


def _where(e: msgspec.DecodeError, data: bytes) -> str:
    """msgspec's reason without its prefix, with the byte offset turned into a line."""
    reason = _reason(e)
    m = _BYTE_POS.search(str(e))
    if m is None:
        return f"{reason}; fix it and upload again"
    line = data.count(b"\n", 0, int(m.group(1))) + 1
    return f"{reason} on line {line}; fix it and upload again"


def _reason(e: msgspec.DecodeError) -> str:
    return _BYTE_POS.sub("", str(e)).strip().removeprefix(_MALFORMED)


def _parse_jsonl(data: bytes, limits: UploadLimits) -> list[Any]:
    decode = msgspec.json.Decoder().decode
    items: list[Any] = []
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            items.append(decode(line))
        except RecursionError:
            raise _too_deep(f"line {number} of the JSON Lines dataset") from None
        except msgspec.DecodeError as e:
            reason = _reason(e)
            raise UploadError(
                "data",
                f"line {number} of the JSON Lines dataset is not valid JSON ({reason}); "
                "each line must hold exactly one JSON value",
            ) from None
        if len(items) > limits.items_max:
            raise _too_many(limits)
    return items


def _parse_csv(data: bytes, limits: UploadLimits, delimiter: str) -> list[Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UploadError(
            "data",
            f"the CSV dataset is not UTF-8 (line {line}); save it as UTF-8 CSV, "
            "or upload .json / .jsonl",
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    items: list[Any] = []
    try:
        header = next(reader, None)
        if header is None:
            return items
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise UploadError("data", f"the CSV header repeats column {dupes[0]!r}; rename it")
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise UploadError(
                    "data",
                    f"CSV line {reader.line_num} has {len(row)} fields but the header has "
                    f"{len(header)}; fix that row (quote values that contain commas)",
                )
            items.append(dict(zip(header, row, strict=True)))
            if len(items) > limits.items_max:
                raise _too_many(limits)
    except csv.Error as e:
        raise UploadError("data", f"CSV line {reader.line_num}: {e}; fix it and retry") from None
    return items


def _too_deep(what: str) -> UploadError:
    return UploadError("data", f"{what} nests arrays or objects too deeply (the limit is "
                               "about 1000 levels); flatten the items")


def _too_many(limits: UploadLimits) -> UploadError:
    return UploadError(
        "data",
        f"the dataset has more than {limits.items_max} items; split it into several tasks "
        "or group small items together",
    )


def _check_item_sizes(items: list[Any], limits: UploadLimits) -> None:
    """Every item fits in ``item_bytes_max`` MessagePack bytes, and can be encoded at all:
    JSON integers have no range, MessagePack's are -2**63 .. 2**64-1."""
    encode = msgspec.msgpack.Encoder().encode
    try:
        if max(map(len, map(encode, items))) <= limits.item_bytes_max:
            return
    except OverflowError:
        pass  # found again below, with the item's index
    for index, item in enumerate(items):
        try:
            size = len(encode(item))
        except OverflowError:
            raise UploadError(
                "data",
                f"item {index} holds an integer outside -2**63 .. 2**64-1, which workers "
                "cannot be sent; write it as a string",
            ) from None
        if size > limits.item_bytes_max:
            raise UploadError(
                "data",
                f"item {index} is {size} bytes encoded, over the limit of "
                f"{limits.item_bytes_max} bytes; split it into smaller items",
            )
