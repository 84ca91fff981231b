"""Compressed files (`x.jsonl.zst`, `x.txt.gz`, `x.csv.bz2`, `x.json.xz`...): the format is the one named under the
compression suffix, and the readers of cpt.data.convert read the file through `open_binary`, a decompressing stream
(never the whole file in memory: a 20 GB `.jsonl.zst` is read line by line).

Damaged data (a truncated download, flipped bytes) surfaces while reading, as CorruptDataError; the dispatcher
(cpt.data.convert.convert_file) turns it into a FileError naming where the data broke. zstd's own stream reader ends
a truncated frame silently, so zstd is decompressed here frame by frame and a frame without its end is an error."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from pathlib import Path
from typing import BinaryIO, Optional

import zstandard

# suffix -> (name, the command that tests such a file)
COMPRESSIONS: dict[str, tuple[str, str]] = {".gz": ("gzip", "gzip -t"), ".zst": ("zstd", "zstd -t"),
                                            ".zstd": ("zstd", "zstd -t"), ".bz2": ("bzip2", "bzip2 -t"),
                                            ".xz": ("xz", "xz -t")}
_CHUNK = 1 << 16  # compressed bytes read at a time


class CorruptDataError(Exception):
    """The compressed data cannot be decompressed from here on (truncated or damaged)."""


def compression(path: Path) -> Optional[str]:
    """The file's compression ("gzip", "zstd", "bzip2", "xz") by its last suffix, or None."""
    found = COMPRESSIONS.get(path.suffix.lower())
    return found[0] if found else None


def check_command(path: Path) -> str:
    """The shell command that checks the compressed file, e.g. `gzip -t x.jsonl.gz`."""
    return f"{COMPRESSIONS[path.suffix.lower()][1]} {path.name}"


def inner_suffix(path: Path) -> str:
    """The suffix that names the format: `.jsonl` for x.jsonl.zst, `.txt` for x.txt (lower case)."""
    if compression(path):
        return Path(path.stem).suffix.lower()
    return path.suffix.lower()


def open_binary(path: Path) -> BinaryIO:
    """The file's bytes, decompressed as they are read when it is compressed. Decompression errors are raised as
    CorruptDataError (an OSError of the file itself stays an OSError)."""
    kind = compression(path)
    if kind is None:
        return open(path, "rb")
    raw = open(path, "rb")
    try:
        inner: io.RawIOBase | BinaryIO
        if kind == "zstd":
            inner = _ZstdFrames(raw)
        elif kind == "gzip":
            inner = gzip.GzipFile(fileobj=raw, mode="rb")
        elif kind == "bzip2":
            inner = bz2.BZ2File(raw, mode="rb")
        else:
            inner = lzma.LZMAFile(raw, mode="rb")
        return io.BufferedReader(_Checked(inner, raw, kind), buffer_size=_CHUNK)
    except BaseException:
        raw.close()
        raise


class _Checked(io.RawIOBase):
    """A decompressing stream whose decompression errors become CorruptDataError."""

    def __init__(self, inner, raw: BinaryIO, kind: str):
        self._inner, self._raw, self._kind, self._out = inner, raw, kind, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            n = self._inner.readinto(buffer)
        except (EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError, OSError) as e:
            if isinstance(e, OSError) and e.errno is not None:  # the disk, not the data
                raise
            detail = str(e) or type(e).__name__
            raise CorruptDataError(f"corrupt or truncated {self._kind} data after {self._out:,} decompressed bytes "
                                   f"({detail})") from None
        self._out += n
        return n

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._raw.close()
            super().close()


class _ZstdFrames(io.RawIOBase):
    """zstd frames one after another (as `zstd -d` reads them); EOFError when the input ends inside a frame."""

    def __init__(self, raw: BinaryIO):
        self._raw, self._dctx = raw, zstandard.ZstdDecompressor()
        self._frame = None  # the open frame's decompressor
        self._input = b""  # compressed bytes not yet fed (what followed the last frame's end)
        self._out = memoryview(b"")  # decompressed bytes not yet returned

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not len(self._out):
            chunk, self._input = self._input or self._raw.read(_CHUNK), b""
            if not chunk:
                if self._frame is not None:
                    raise EOFError("the file ends inside a zstd frame")
                return 0
            if self._frame is None:
                self._frame = self._dctx.decompressobj()
            self._out = memoryview(self._frame.decompress(chunk))
            if self._frame.eof:
                self._input, self._frame = self._frame.unused_data, None
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n
