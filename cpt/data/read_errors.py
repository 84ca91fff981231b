"""How a reader reports what it cannot read: a whole file (FileError, raised: the caller reports the file and goes on;
EmptyFileError: nothing to train on, counted) or one record (an OnRecordError callback with the record's line, row,
record or page number: the rest of the file goes on), or a record it passes over on purpose ({SKIP: reason}:
counted in the report). Every reader (cpt.data.convert, cpt.data.pdf, cpt.data.warc...) uses these."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

OnRecordError = Callable[[int, str], None]
SKIP = "skip"  # a reader yields {SKIP: reason} for a record it passes over: no document, counted under that reason


class FileError(Exception):
    """A whole file cannot be converted. str(e) names the file, says why and what to do."""

    def __init__(self, path: Path, message: str):
        super().__init__(f"{path}: {message}")
        self.path, self.reason = path, message


class EmptyFileError(FileError):
    """A readable file with no text to train on (empty, whitespace, front matter only): counted, not an error."""
