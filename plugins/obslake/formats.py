"""Streaming readers for the file formats obslake imports.

Every reader takes a seekable binary file object (a local file or a storage layer's ranged reader)
and yields :class:`pyarrow.RecordBatch` objects of bounded size, so a file larger than memory
streams through. All the decoding is done by pyarrow (Parquet, CSV, Arrow IPC) and fastavro (Avro);
this module picks the reader, sniffs magic bytes for clear messages, maps Avro schemas to Arrow
and turns every decoding failure into :class:`~obslake.exceptions.FileFormatError` naming the
source URI, the position where it is known, and the fix.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, BinaryIO

import fastavro
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from obslake.exceptions import FileFormatError

FORMATS = ("parquet", "csv", "avro", "arrow")
"""The formats :func:`read_batches` reads (``arrow`` covers both the IPC file and stream formats)."""

EXTENSIONS: Mapping[str, str] = MappingProxyType(
    {
        ".parquet": "parquet",
        ".pq": "parquet",
        ".csv": "csv",
        ".csv.gz": "csv",
        ".avro": "avro",
        ".arrow": "arrow",
        ".feather": "arrow",
        ".ipc": "arrow",
        ".arrows": "arrow",
    }
)
"""Key suffix (lower case) -> format. ``.csv.gz`` is gzip-compressed CSV, detected by magic bytes."""

CSV_BLOCK_SIZE = 4 << 20
"""Bytes per CSV block: the unit of parsing and of type inference (first block only).

It also sets CSV memory use: pyarrow's streaming reader reads up to 32 blocks ahead on its I/O
thread, so one open CSV holds roughly 34 blocks (about 0.5-0.7 GB RSS at 16 MiB, ~130 MB at 1 MiB)
however large the file is."""

CSV_NULL_VALUES = ("", "NULL", "null")
"""CSV cells read as null in every column, string columns included (pyarrow's longer default list
would also turn strings such as ``NA`` - North America - into nulls)."""

MAX_CSV_ROW_BYTES = 64 << 20
"""The largest CSV row obslake reads (``ROW_TOO_LARGE`` above it). A row larger than
:data:`CSV_BLOCK_SIZE` is read with a larger block (4x at a time, up to this limit), so memory for
such files grows with their largest row, never with their size."""

DEFAULT_BATCH_ROWS = 65_536

# Byte-order marks of the text encodings a CSV must not be in (longest first: UTF-32 LE starts like UTF-16 LE).
_BINARY_MAGIC = (
    (b"PAR1", "a Parquet file"),
    (b"ARROW1", "an Arrow IPC file"),
    (b"Obj\x01", "an Avro file"),
    (b"PK\x03\x04", "a ZIP archive (an Excel .xlsx workbook?)"),
    (b"\xff\xff\xff\xff", "an Arrow IPC stream"),
)
_OTHER_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32 LE"),
    (b"\x00\x00\xfe\xff", "UTF-32 BE"),
    (b"\xff\xfe", "UTF-16 LE"),
    (b"\xfe\xff", "UTF-16 BE"),
)

_PARQUET_MAGIC = b"PAR1"
_ARROW_FILE_MAGIC = b"ARROW1"
_AVRO_MAGIC = b"Obj\x01"
_GZIP_MAGIC = b"\x1f\x8b"

_FIX = {
    "parquet": "re-export it with pyarrow.parquet.write_table (or any Parquet writer) or fix the extension",
    "csv": (
        "fix the file (UTF-8 text, one header row, the same number of fields on every row, one type "
        "per column) or fix the extension"
    ),
    "avro": "re-export it as an Avro object container file (e.g. with fastavro.writer) or fix the extension",
    "arrow": ("re-export it with pyarrow.ipc.new_file or pyarrow.ipc.new_stream (Feather V2) or fix the extension"),
}

# What a decoder raises on bad bytes. Exceptions raised by the file object itself pass through
# pyarrow unchanged, so storage errors (ObslakeError subclasses) are never re-labelled here.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    pa.ArrowException,
    OSError,
    ValueError,  # includes UnicodeDecodeError and pa.ArrowInvalid
    EOFError,
    MemoryError,  # MEMORY_LIMIT: a batch, page or cell larger than the worker can hold
)
# fastavro decodes in Python: corrupt blocks surface as any of these.
_AVRO_ERRORS: tuple[type[BaseException], ...] = (
    *_DECODE_ERRORS,
    zlib.error,
    struct.error,
    IndexError,
    KeyError,
    TypeError,  # includes pa.ArrowTypeError from the record -> Arrow conversion
    OverflowError,
    MemoryError,  # a corrupt length prefix can ask for absurd allocations
)

_CSV_COLUMN_RE = re.compile(r"^In CSV column #(\d+): ")
_CSV_ROW_RE = re.compile(r"Row #(\d+): ")


class _UnsupportedAvroSchema(ValueError):
    """An Avro writer schema that has no Arrow equivalent (the readers wrap it in FileFormatError).

    ``path`` is the field's dotted path where one is known (its first part is the file's column).
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


# --------------------------------------------------------------------------------------------------
# Extension mapping
# --------------------------------------------------------------------------------------------------


def format_for_key(key: str, allowed: Iterable[str] | None = None) -> str | None:
    """Return the format of an object key from its extension.

    Args:
        key: An object key or path, e.g. ``"preds/2024/01/part-0001.csv.gz"``. Case-insensitive.
        allowed: If given, only these formats count; a key of any other format returns ``None``.

    Returns:
        One of :data:`FORMATS`, or ``None`` if the extension is unknown or not allowed.

    Note:
        Never raises: unsupported keys are simply skipped by the caller. ``.gz`` is recognised only
        as ``.csv.gz``; other compressed files (``.parquet.gz``) return ``None``.
    """
    lowered = key.lower()
    longest_first = sorted(EXTENSIONS.items(), key=lambda kv: -len(kv[0]))
    fmt = next((f for suffix, f in longest_first if lowered.endswith(suffix)), None)
    if fmt is None:
        return None
    if allowed is not None and fmt not in {a.lower() for a in allowed}:
        return None
    return fmt


# --------------------------------------------------------------------------------------------------
# Public readers
# --------------------------------------------------------------------------------------------------


def read_schema(f: BinaryIO, fmt: str, *, source: str, max_bytes: int | None = None) -> pa.Schema:
    """Read a file's Arrow schema without reading its data.

    Parquet reads only the footer, Arrow IPC only the schema message (or the file footer), Avro only
    the header (the writer schema, mapped by :func:`arrow_schema_for_avro`), and CSV the header row
    plus type inference on the first :data:`CSV_BLOCK_SIZE` bytes (exactly what :func:`read_batches`
    will use).

    Args:
        f: A seekable binary file object; it is rewound first and left open.
        fmt: One of :data:`FORMATS`.
        source: The file's URI, used in error messages.

    Returns:
        The schema every batch from :func:`read_batches` will have.

    Raises:
        FileFormatError: The file is empty, not in ``fmt``, truncated or otherwise unreadable.
        ValueError: ``fmt`` is not one of :data:`FORMATS` (a programming error).

    Note:
        Only the parts named above are checked: a file whose schema reads fine may still fail in
        :func:`read_batches` (a truncated Avro or CSV body, a CSV value that does not fit the type
        inferred from the first block). Errors raised by ``f`` itself (storage errors) propagate
        unchanged.
    """
    return _open(f, fmt, source, max_bytes=max_bytes).schema


def read_batches(
    f: BinaryIO,
    fmt: str,
    *,
    source: str,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    csv_as_strings: bool = False,
    max_bytes: int | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream a file as record batches of at most ``batch_rows`` rows, in bounded memory.

    Parquet is read with ``ParquetFile.iter_batches``, CSV (plain or gzip) with
    ``pyarrow.csv.open_csv`` in :data:`CSV_BLOCK_SIZE` blocks, Arrow IPC with ``pyarrow.ipc.open_file``
    or ``open_stream`` (chosen by the ``ARROW1`` magic bytes), and Avro with ``fastavro.reader`` in
    chunks of ``batch_rows`` records. Memory is bounded by one Parquet row group, pyarrow's CSV
    readahead (about 34 blocks, see :data:`CSV_BLOCK_SIZE`) plus ``batch_rows`` rows, one IPC record
    batch, or ``batch_rows`` Avro records - never by the file size.

    Every batch from one file has the same schema (that of :func:`read_schema`); batches may be
    re-chunked relative to the file's own row groups/blocks (CSV blocks are coalesced into batches of
    at least ``batch_rows // 2`` rows but the last), and empty batches are dropped.

    CSV specifics: the header row gives the names; types are inferred from the first block only;
    a UTF-8 BOM is skipped; the cells in :data:`CSV_NULL_VALUES` are null; columns that are entirely
    null in the first block are read as strings (a late-arriving ``label`` column must not fail
    with "conversion error to null"); values must be valid UTF-8.

    Args:
        f: A seekable binary file object; it is rewound first and left open.
        fmt: One of :data:`FORMATS`.
        source: The file's URI, used in error messages.
        batch_rows: Maximum rows per yielded batch.
        csv_as_strings: CSV only: every column is read as string (the caller casts values itself and
            can then report each bad cell with its row instead of failing the whole file).
        max_bytes: gzip-compressed CSV only: fail with ``FILE_TOO_LARGE`` once more than this many
            bytes have been decompressed (the caller checks the stored size itself).

    Returns:
        An iterator of record batches. The file is opened (header/footer/first CSV block checked)
        before this function returns; the data is decoded lazily while iterating.

    Raises:
        FileFormatError: Immediately, if the file is empty or its header/footer is unreadable; while
            iterating, if the data is corrupt or truncated, or (CSV) a row is ragged, not UTF-8, or
            holds a value that does not fit the column's inferred type.
        ValueError: ``fmt`` is not one of :data:`FORMATS` or ``batch_rows`` < 1 (programming errors).

    Note:
        A failure mid-file raises after earlier batches were yielded: callers must treat the file
        as failed as a whole (discard what they staged). The message gives the number of rows read
        successfully before the failure and, for CSV, the column and the 1-based line (header =
        line 1) of the bad value or ragged row. Errors raised by ``f`` itself
        (storage errors) propagate unchanged. An Arrow IPC *stream* cut exactly between two
        messages cannot be told from a complete one (the format has no footer).
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    return _open(f, fmt, source, csv_as_strings=csv_as_strings, max_bytes=max_bytes).batches(batch_rows)


# --------------------------------------------------------------------------------------------------
# Opening: one opener per format
# --------------------------------------------------------------------------------------------------


class _Opened:
    """A file whose header/footer was read: its schema and a lazy batch iterator."""

    def __init__(
        self,
        *,
        source: str,
        fmt: str,
        schema: pa.Schema,
        batches: Callable[[int], Iterator[pa.RecordBatch]],
        errors: tuple[type[BaseException], ...] = _DECODE_ERRORS,
        describe: Callable[[BaseException], str] | None = None,
        locate: Callable[[BaseException], dict[str, Any]] | None = None,
        coalesce: bool = False,
    ) -> None:
        self.source = source
        self.fmt = fmt
        self.schema = schema
        self._batches = batches
        self._errors = errors
        self._describe = describe or _detail
        self._locate = locate or (lambda exc: {})
        self._coalesce = coalesce

    def batches(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """Wrap the decoder: coalesce, slice to ``batch_rows``, drop empty batches, translate errors.

        With ``coalesce`` (CSV, whose decoder yields one batch per block, a few thousand rows),
        decoded batches are concatenated until at least half of ``batch_rows`` rows are pending, so
        callers pay their per-batch costs (mapping, validation) a few times less often. The rows
        decoded before a decoding error are all yielded before the error is raised, as without
        coalescing.
        """
        rows = 0
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        min_rows = max(1, batch_rows // 2) if self._coalesce else 1
        it = self._batches(batch_rows)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                break
            except self._errors as exc:
                yield from _sliced(pending, batch_rows)
                where = f" after {rows} rows were read" if rows else " before any row was read"
                detail = self._describe(exc)
                code = _code_for(self.fmt, detail, exc)
                raise _error(
                    self.source,
                    self.fmt,
                    f"cannot decode the data{where} ({detail})",
                    code=code,
                    fix=_CODE_FIX.get(code),
                    **self._locate(exc),
                ) from exc
            if not batch.num_rows:
                continue
            pending.append(batch)
            pending_rows += batch.num_rows
            rows += batch.num_rows
            if pending_rows >= min_rows:
                pending_rows = 0
                yield from _sliced(pending, batch_rows)
        yield from _sliced(pending, batch_rows)


def _sliced(batches: list[pa.RecordBatch], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Empty ``batches`` (same schema): yield their rows as one run, in slices of at most ``batch_rows``.

    Several batches are concatenated first, and the list is emptied before anything is yielded, so the
    originals are freed while the caller works on the copy.
    """
    run = pa.Table.from_batches(batches).combine_chunks().to_batches() if len(batches) > 1 else list(batches)
    batches.clear()
    for batch in run:
        for offset in range(0, batch.num_rows, batch_rows):
            yield batch.slice(offset, batch_rows)


def _open(f: BinaryIO, fmt: str, source: str, *, csv_as_strings: bool = False, max_bytes: int | None = None) -> _Opened:
    """Check the format name and emptiness, then dispatch to the format's opener."""
    openers = {"parquet": _open_parquet, "csv": _open_csv, "avro": _open_avro, "arrow": _open_arrow}
    if fmt not in openers:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(0)
    if size == 0:
        raise FileFormatError(
            f"{source} is empty (0 bytes); upload the complete file (was the upload interrupted?) or delete the object",
            code="FILE_EMPTY",
        )
    if fmt == "csv":
        return _open_csv(f, source, size, as_strings=csv_as_strings, max_bytes=max_bytes)
    return openers[fmt](f, source, size)


def _open_parquet(f: BinaryIO, source: str, size: int) -> _Opened:
    head = f.read(4)
    if head != _PARQUET_MAGIC:
        what = (
            "an encrypted Parquet file (encrypted footers are not supported)"
            if head == b"PARE"
            else f"not a Parquet file (bad magic bytes {head!r} at byte 0)"
        )
        raise _error(source, "parquet", what)
    f.seek(max(size - 4, 0))
    tail = f.read(4)
    if size < 12 or tail != _PARQUET_MAGIC:
        raise _error(
            source,
            "parquet",
            f"truncated Parquet file: no footer magic bytes at byte {max(size - 4, 0)} of {size} "
            "(an incomplete upload or a writer that was not closed)",
        )
    f.seek(0)
    try:
        # pages written with a CRC (write_page_checksum) are verified; a mismatch is FILE_CORRUPT
        pf = pq.ParquetFile(f, page_checksum_verification=True)
        schema = pf.schema_arrow
    except _DECODE_ERRORS as exc:
        raise _error(source, "parquet", f"unreadable Parquet footer ({_detail(exc)})") from exc
    return _Opened(
        source=source,
        fmt="parquet",
        schema=schema,
        batches=lambda n: iter(pf.iter_batches(batch_size=n)),
    )


def _open_arrow(f: BinaryIO, source: str, size: int) -> _Opened:
    head = f.read(len(_ARROW_FILE_MAGIC))
    f.seek(0)
    if head == _ARROW_FILE_MAGIC:
        f.seek(max(size - 6, 0))
        if size < 12 or f.read(6) != _ARROW_FILE_MAGIC:
            raise _error(
                source,
                "arrow",
                f"truncated Arrow IPC file: no footer magic bytes at byte {max(size - 6, 0)} of {size} "
                "(an incomplete upload or a writer that was not closed)",
            )
        f.seek(0)
        try:
            file_reader = pa.ipc.open_file(f)
        except _DECODE_ERRORS as exc:
            raise _error(source, "arrow", f"unreadable Arrow IPC file footer ({_detail(exc)})") from exc

        def file_batches(_: int) -> Iterator[pa.RecordBatch]:
            for i in range(file_reader.num_record_batches):
                yield file_reader.get_batch(i)

        return _Opened(source=source, fmt="arrow", schema=file_reader.schema, batches=file_batches)
    if head[:4] == b"FEA1":
        raise _error(source, "arrow", "a Feather V1 file, which is not supported (re-save it with pyarrow.feather)")
    try:
        stream_reader = pa.ipc.open_stream(f)
    except _DECODE_ERRORS as exc:
        raise _error(
            source,
            "arrow",
            f"neither an Arrow IPC file (no {_ARROW_FILE_MAGIC.decode()} magic bytes at byte 0) nor a "
            f"readable Arrow IPC stream ({_detail(exc)})",
        ) from exc
    return _Opened(source=source, fmt="arrow", schema=stream_reader.schema, batches=lambda _: iter(stream_reader))


class _NonClosingReader(io.RawIOBase):
    """A read-only view of the caller's file object that pyarrow may close without closing it.

    ``pyarrow.PythonFile`` closes the wrapped object when it is garbage-collected; the file belongs
    to the caller, so the gzip stream gets this view instead.
    """

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._raw.read(size)

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _LimitedReader(io.RawIOBase):
    """A read-only stream that fails with ``FILE_TOO_LARGE`` once more than ``limit`` bytes were read."""

    def __init__(self, raw: Any, limit: int, source: str) -> None:
        super().__init__()
        self._raw, self._limit, self._source, self._read = raw, limit, source, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size if size is not None and size >= 0 else self._limit + 1 - self._read)
        self._read += len(data)
        if self._read > self._limit:
            raise FileFormatError(
                f"{self._source}: decompresses to more than {self._limit:,} bytes, over the job's max_file_bytes; "
                "split the file or raise max_file_bytes in the job YAML",
                code="FILE_TOO_LARGE",
            )
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _csv_input(f: BinaryIO, max_bytes: int | None = None, source: str = "") -> Any:
    """Rewind ``f`` and return it, or a gzip-decompressing stream over it if it starts with 0x1f8b.

    The decompressed stream counts what it yields against ``max_bytes`` (a small ``.csv.gz`` can
    hold gigabytes).
    """
    f.seek(0)
    magic = f.read(2)
    f.seek(0)
    if magic == _GZIP_MAGIC:
        stream = pa.CompressedInputStream(_NonClosingReader(f), "gzip")
        return _LimitedReader(stream, max_bytes, source) if max_bytes is not None else stream
    return f


def _open_csv(
    f: BinaryIO, source: str, size: int, *, as_strings: bool = False, max_bytes: int | None = None
) -> _Opened:
    def open_reader(
        column_types: dict[str, pa.DataType] | None, block_size: int, stream: Any = None
    ) -> pacsv.CSVStreamingReader:
        return pacsv.open_csv(
            _csv_input(f, max_bytes, source) if stream is None else stream,
            # use_threads=False: pyarrow then reports the line of a ragged row ("Row #N"), and on
            # one stream it is no slower (parsing is per block either way).
            read_options=pacsv.ReadOptions(block_size=block_size, use_threads=False),
            # quoted values may span lines (spreadsheet exports, free text): the chunker then splits
            # blocks only between complete rows, at any file size
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types=column_types,
                null_values=list(CSV_NULL_VALUES),
                strings_can_be_null=True,
            ),
        )

    names: list[str] = []

    def describe(exc: BaseException) -> str:
        if _is_straddle(exc):
            return f"a row is larger than {MAX_CSV_ROW_BYTES >> 20} MiB, obslake's limit for one CSV row"
        # pyarrow's "Row #N" is the 1-based physical line, header included (use_threads=False).
        detail = _CSV_ROW_RE.sub(r"line \1: ", _detail(exc))
        match = _CSV_COLUMN_RE.match(detail)
        if match and int(match.group(1)) < len(names):
            index = int(match.group(1))
            return f"column {names[index]!r} (#{index}), {detail[match.end() :]}"
        return detail

    def locate(exc: BaseException) -> dict[str, Any]:
        """``line`` and ``column`` of a CSV parse/conversion error, where pyarrow gives them."""
        detail = _detail(exc)
        row, col = _CSV_ROW_RE.search(detail), _CSV_COLUMN_RE.match(detail)
        return {
            "line": int(row.group(1)) if row else None,
            "column": names[int(col.group(1))] if col and int(col.group(1)) < len(names) else None,
        }

    sample = _csv_input(f, max_bytes, source).read(4096)
    for mark, encoding in _OTHER_BOMS:
        if sample.startswith(mark):
            raise _error(
                source,
                "csv",
                f"{encoding} text (byte-order mark {mark.hex(' ')}), not UTF-8",
                code="FILE_ENCODING",
                fix="save the file as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)",
            )
    if sample.count(b"\x00") * 4 > len(sample):  # every other (or every fourth) byte NUL: UTF-16/32 without BOM
        raise _error(
            source,
            "csv",
            "UTF-16 or UTF-32 text (a NUL byte in every other or fourth byte), not UTF-8",
            code="FILE_ENCODING",
            fix="save the file as UTF-8 (e.g. iconv -f UTF-16LE -t UTF-8)",
        )
    for magic, what in _BINARY_MAGIC:
        if sample.startswith(magic):
            raise _error(
                source,
                "csv",
                f"{what}, not CSV text (magic bytes {magic!r} at byte 0)",
                code="FILE_CORRUPT",
                fix="give the file the extension of its format, or export it as CSV",
            )
    block = CSV_BLOCK_SIZE
    probe: Any  # the inferring reader of the first block (set by the loop, which exits only by break)
    try:
        while True:
            # Infer the types from an in-memory copy of the start of the file: a streaming reader
            # keeps reading ahead on an I/O thread, so a probe reader over ``f`` itself would race
            # the real reader (which rewinds the same ``f``). pyarrow infers from the first block
            # only; the second block of the copy may end mid-row, and is never parsed.
            head = _csv_input(f, max_bytes, source).read(2 * block)
            try:
                probe = open_reader(None, block, pa.BufferReader(head))
            except pa.ArrowInvalid as exc:
                if _is_straddle(exc) and block < MAX_CSV_ROW_BYTES:
                    block = min(4 * block, MAX_CSV_ROW_BYTES)  # the first row is larger than a block
                    continue
                raise
            break
        # Inference gives `null` to columns empty throughout the first block and `binary` to columns
        # with invalid UTF-8 in it. Read both as strings: later values then still fit, and invalid
        # UTF-8 becomes a conversion error instead of silently becoming bytes.
        retype = {
            field.name: pa.string()
            for field in probe.schema
            if pa.types.is_null(field.type) or pa.types.is_binary(field.type)
        }
        names.extend(probe.schema.names)
        probe.close()
        types = {name: pa.string() for name in names} if as_strings else (retype or None)
        if types:
            probe = open_reader(types, block, pa.BufferReader(head))
            probe.close()
        schema = probe.schema
        del head
    except _DECODE_ERRORS as exc:
        if "Empty CSV file" in str(exc):
            raise _error(
                source, "csv", f"no header row ({size} bytes, empty after decompression)", code="FILE_EMPTY"
            ) from exc
        code = _code_for("csv", describe(exc), exc)
        where = locate(exc)
        if code == "FILE_ENCODING" and where.get("line") is None:
            where["line"] = _first_bad_utf8_line(_csv_input(f, max_bytes, source).read(2 * block))
        raise _error(
            source, "csv", f"unreadable first block ({describe(exc)})", code=code, fix=_CODE_FIX.get(code), **where
        ) from exc

    def csv_batches(_: int) -> Iterator[pa.RecordBatch]:
        """The file's batches; a row larger than the block restarts with a larger block, skipping the
        rows already yielded (rare: the cost of one re-read, only for such files)."""
        size_now, done = block, 0
        while True:
            skip = done
            try:
                for batch in open_reader(types, size_now):
                    if skip:
                        if batch.num_rows <= skip:
                            skip -= batch.num_rows
                            continue
                        batch, skip = batch.slice(skip), 0
                    if size_now > CSV_BLOCK_SIZE:  # blocks grew for large rows: hold each row to the limit
                        _check_row_bytes(batch, source, done)
                    done += batch.num_rows
                    yield batch
                return
            except pa.ArrowInvalid as exc:
                # once blocks grew for a large row, pyarrow may also report the row that still does not fit
                # as an empty block (it depends on how the stream's reads fall): the same case
                grown_empty = size_now > CSV_BLOCK_SIZE and "empty csv file or block" in str(exc).lower()
                if not (_is_straddle(exc) or grown_empty):
                    raise
                if size_now >= MAX_CSV_ROW_BYTES:
                    if grown_empty:
                        raise pa.ArrowInvalid(f"CSV row straddles the largest block read ({exc})") from exc
                    raise
                size_now = min(4 * size_now, MAX_CSV_ROW_BYTES)

    return _Opened(
        # the real reader is opened only when the batches are read (read_schema must not leave one
        # reading ahead on ``f``)
        source=source,
        fmt="csv",
        schema=schema,
        batches=csv_batches,
        describe=describe,
        locate=locate,
        coalesce=True,
    )


def _check_row_bytes(batch: pa.RecordBatch, source: str, rows_before: int) -> None:
    """Refuse a CSV row over :data:`MAX_CSV_ROW_BYTES` (pyarrow joins a row across two blocks)."""
    import pyarrow.compute as pc

    total = None
    for col in batch.columns:
        if pa.types.is_string(col.type) or pa.types.is_binary(col.type):
            length = pc.fill_null(pc.binary_length(col), 0).cast(pa.int64())
            total = length if total is None else pc.add(total, length)
    if total is None or not len(total):
        return
    biggest = pc.max(total).as_py()
    if biggest > MAX_CSV_ROW_BYTES:
        row = rows_before + pc.index(total, biggest).as_py() + 1
        raise FileFormatError(
            f"{source}: data row {row} holds {biggest:,} bytes, over obslake's limit for one CSV row "
            f"({MAX_CSV_ROW_BYTES >> 20} MiB); {_CODE_FIX['ROW_TOO_LARGE']}",
            code="ROW_TOO_LARGE",
        )


def _first_bad_utf8_line(head: bytes) -> int | None:
    """The 1-based line of the first byte of ``head`` that is not UTF-8 (None if it all decodes)."""
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data" and exc.start >= len(head) - 4:
            return None  # cut in the middle of a character at the end of the sample
        return head.count(b"\n", 0, exc.start) + 1
    return None


def _is_straddle(exc: BaseException) -> bool:
    """pyarrow's error for a CSV row that does not fit in one block."""
    return isinstance(exc, pa.ArrowInvalid) and "straddl" in str(exc)


def _open_avro(f: BinaryIO, source: str, size: int) -> _Opened:
    head = f.read(len(_AVRO_MAGIC))
    f.seek(0)
    if head != _AVRO_MAGIC:
        raise _error(source, "avro", f"not an Avro object container file (bad magic bytes {head!r} at byte 0)")
    try:
        reader = fastavro.reader(f)
    except _AVRO_ERRORS as exc:
        raise _error(source, "avro", f"unreadable Avro header ({_detail(exc)})") from exc
    try:
        schema = arrow_schema_for_avro(reader.writer_schema)
    except _UnsupportedAvroSchema as exc:
        column = re.split(r"[.\[{]", exc.path, maxsplit=1)[0] or None
        raise _error(
            source,
            "avro",
            f"unsupported Avro writer schema: {exc}",
            fix="write one type per field (a union only with null), or leave the field out",
            code="TYPE_UNSUPPORTED" if column else "FILE_CORRUPT",
            column=column,
        ) from exc

    def avro_batches(batch_rows: int) -> Iterator[pa.RecordBatch]:
        records = iter(reader)
        while chunk := list(itertools.islice(records, batch_rows)):
            yield pa.RecordBatch.from_pylist(chunk, schema=schema)

    return _Opened(source=source, fmt="avro", schema=schema, batches=avro_batches, errors=_AVRO_ERRORS)


# --------------------------------------------------------------------------------------------------
# Avro <-> Arrow schemas
# --------------------------------------------------------------------------------------------------

_AVRO_PRIMITIVES: Mapping[str, pa.DataType] = MappingProxyType(
    {
        "null": pa.null(),
        "boolean": pa.bool_(),
        "int": pa.int32(),
        "long": pa.int64(),
        "float": pa.float32(),
        "double": pa.float64(),
        "bytes": pa.binary(),
        "string": pa.string(),
    }
)


def arrow_schema_for_avro(avro_schema: Any) -> pa.Schema:
    """Map an Avro record schema (as parsed by fastavro) to the Arrow schema of the decoded records.

    Unions with ``null`` become nullable fields; records become structs, arrays lists, maps
    ``map<string, V>``, enums strings and fixed ``fixed_size_binary``. The logical types fastavro
    decodes are mapped to their Arrow types: ``timestamp-millis``/``-micros`` to
    ``timestamp(unit, tz="UTC")``, ``local-timestamp-*`` to naive timestamps, ``date`` to
    ``date32``, ``time-millis``/``-micros`` to ``time32``/``time64``, ``decimal`` to
    ``decimal128``/``decimal256`` and ``uuid`` to ``pa.uuid()``. Logical types fastavro does not
    decode keep their underlying type, as the Avro spec requires.

    Args:
        avro_schema: The writer schema, e.g. ``fastavro.reader(f).writer_schema`` (named types
            fully qualified, later uses referenced by name).

    Returns:
        The Arrow schema.

    Raises:
        ValueError: The top level is not a record, a union has several non-null branches, or a
            named type is recursive or unknown (the readers wrap it in FileFormatError).

    Note:
        Pure function of the schema: no data is read.
    """
    if not isinstance(avro_schema, Mapping) or avro_schema.get("type") != "record":
        raise _UnsupportedAvroSchema("the top-level type must be a record")
    struct_type, _ = _arrow_type_for_avro(avro_schema, {}, "")
    return pa.schema(list(struct_type))


def _arrow_type_for_avro(avro: Any, named: dict[str, pa.DataType], path: str) -> tuple[pa.DataType, bool]:
    """Return ``(arrow_type, nullable)`` for one Avro type; ``named`` collects named types seen."""
    if isinstance(avro, list):
        branches = [b for b in avro if b != "null"]
        nullable = len(branches) < len(avro)
        if not branches:
            return pa.null(), True
        if len(branches) > 1:
            raise _UnsupportedAvroSchema(
                f"field {path or '<root>'!r} is a union of several non-null types {branches!r} "
                '(only ["null", T] unions are supported)',
                path,
            )
        arrow_type, _ = _arrow_type_for_avro(branches[0], named, path)
        return arrow_type, nullable
    if isinstance(avro, str):
        if avro in _AVRO_PRIMITIVES:
            return _AVRO_PRIMITIVES[avro], avro == "null"
        if avro in named:
            return named[avro], False
        raise _UnsupportedAvroSchema(f"field {path!r} refers to unknown or recursive type {avro!r}")
    if not isinstance(avro, Mapping):
        raise _UnsupportedAvroSchema(f"field {path!r} has a malformed type {avro!r}")

    base = avro.get("type")
    logical = _arrow_type_for_logical(avro)
    if logical is not None:
        return logical, False
    if base == "record":
        fields = []
        for field in avro["fields"]:
            child = f"{path}.{field['name']}" if path else field["name"]
            arrow_type, nullable = _arrow_type_for_avro(field["type"], named, child)
            fields.append(pa.field(field["name"], arrow_type, nullable=nullable))
        result: pa.DataType = pa.struct(fields)
    elif base == "enum":
        result = pa.string()
    elif base == "fixed":
        result = pa.binary(int(avro["size"]))
    elif base == "array":
        item, nullable = _arrow_type_for_avro(avro["items"], named, f"{path}[]")
        return pa.list_(pa.field("item", item, nullable=nullable)), False
    elif base == "map":
        value, nullable = _arrow_type_for_avro(avro["values"], named, f"{path}{{}}")
        return pa.map_(pa.string(), pa.field("value", value, nullable=nullable)), False
    else:  # {"type": "long"} and the like, possibly with a logical type fastavro ignores
        return _arrow_type_for_avro(base, named, path)
    if "name" in avro:
        named[avro["name"]] = result
    return result, False


def _arrow_type_for_logical(avro: Mapping[str, Any]) -> pa.DataType | None:
    """The Arrow type of a logical type fastavro decodes (keyed as fastavro does), else None."""
    base, logical = avro.get("type"), avro.get("logicalType")
    if not isinstance(base, str) or not isinstance(logical, str):
        return None
    key = f"{base}-{logical}"
    if key in ("bytes-decimal", "fixed-decimal"):
        precision = int(avro["precision"])
        scale = int(avro.get("scale", 0))
        return pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
    return {
        "long-timestamp-millis": pa.timestamp("ms", tz="UTC"),
        "long-timestamp-micros": pa.timestamp("us", tz="UTC"),
        "long-local-timestamp-millis": pa.timestamp("ms"),
        "long-local-timestamp-micros": pa.timestamp("us"),
        "int-date": pa.date32(),
        "int-time-millis": pa.time32("ms"),
        "long-time-micros": pa.time64("us"),
        "string-uuid": pa.uuid(),
    }.get(key)


# --------------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------------


def _detail(exc: BaseException) -> str:
    """The first line of an exception's message, shortened, with its type if the message is empty."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


_CODE_FIX = {
    "ROW_TOO_LARGE": "split the large values into several rows or store them elsewhere (a link); one CSV row may "
    f"hold at most {MAX_CSV_ROW_BYTES >> 20} MiB",
    "MEMORY_LIMIT": "split the file into smaller files (or smaller row groups / record batches), or give the "
    "worker more memory",
    "FILE_ENCODING": "save the file as UTF-8",
}


def _code_for(fmt: str, detail: str, exc: BaseException | None = None) -> str:
    """The error code of a decode failure (README "Error codes")."""
    if isinstance(exc, MemoryError):  # includes pyarrow's ArrowMemoryError
        return "MEMORY_LIMIT"
    if exc is not None and _is_straddle(exc):
        return "ROW_TOO_LARGE"
    low = detail.lower()
    if fmt == "csv" and "expected" in low and "columns" in low:
        return "CSV_RAGGED"
    if "utf8" in low or "utf-8" in low:
        return "FILE_ENCODING"
    return "FILE_CORRUPT"


def _error(
    source: str,
    fmt: str,
    what: str,
    *,
    fix: str | None = None,
    code: str | None = None,
    line: int | None = None,
    column: str | None = None,
) -> FileFormatError:
    """Build ``FileFormatError("<source>: <what>; <fix>")`` with an error code (default FILE_CORRUPT) and location."""
    return FileFormatError(
        f"{source}: {what}; {fix or _FIX[fmt]}", code=code or _code_for(fmt, what), line=line, column=column
    )
