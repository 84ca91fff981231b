"""What prepare did with every file and document: status per file, per-record problems, documents kept per
split and dropped per reason, per source. Problems are logged as they happen and saved as report.json; with
data.strict=true the first problem stops prepare instead."""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from pathlib import Path

from cpt.common.errors import UserError

log = logging.getLogger(__name__)

MAX_RECORD_ERRORS_LOGGED = 20  # per file; all of them go to report.json


class PrepareError(UserError, RuntimeError):
    """A problem with the input that stops prepare (data.strict=true, or nothing usable at all)."""


class PrepareReport:
    def __init__(self, strict: bool):
        self.strict = strict
        self.files: list[dict] = []
        self.warnings: list[str] = []
        self.kept: dict[str, Counter] = defaultdict(Counter)  # source -> split -> documents
        self.dropped: dict[str, Counter] = defaultdict(Counter)  # source -> reason -> documents
        self.notes: dict[str, str] = {}  # source -> what its budget did

    def file(self, source: str, path: Path, fmt: str | None) -> dict:
        entry = {"path": str(path), "source": source, "format": fmt, "status": "ok", "docs": 0, "kept": 0,
                 "dropped": Counter(), "record_errors": []}
        self.files.append(entry)
        return entry

    def record_error(self, entry: dict, line: int, message: str) -> None:
        entry["record_errors"].append({"line": line, "error": message})
        entry["status"] = "partial"
        if self.strict:
            raise PrepareError(f"{entry['path']}:{line}: {message} (data.strict=true)")
        if len(entry["record_errors"]) <= MAX_RECORD_ERRORS_LOGGED:
            log.warning("%s:%d: %s — record skipped", entry["path"], line, message)

    def warn(self, message: str) -> None:
        """A problem with the prepared data as a whole: logged and kept in report.json's summary."""
        self.warnings.append(message)
        log.warning(message)

    def file_empty(self, entry: dict, message: str) -> None:
        """A readable file without trainable text: counted and summarized once (log_summary), never fatal."""
        entry["status"], entry["error"] = "empty", message

    def file_failed(self, entry: dict, message: str) -> None:
        """The file (or its rest) could not be read. Documents read before the problem (a compressed file that breaks
        midway) are kept and counted: status "partly_read" then, else "error"."""
        entry["status"], entry["error"] = "partly_read" if entry["docs"] else "error", message
        if self.strict:
            raise PrepareError(f"{message} (data.strict=true)")
        if entry["docs"]:
            log.error("%s — file partly read: its first %d documents kept", message, entry["docs"])
        else:
            log.error("%s — file skipped", message)

    def keep(self, entry: dict, split: str) -> None:
        entry["docs"] += 1
        entry["kept"] += 1
        self.kept[entry["source"]][split] += 1

    def drop(self, entry: dict, reason: str, count: int = 1) -> None:
        entry["docs"] += count
        entry["dropped"][reason] += count
        self.dropped[entry["source"]][reason] += count

    def note(self, source: str, message: str) -> None:
        """What a source's settings did as a whole (its budget): logged, and kept in report.json's summary."""
        self.notes[source] = message
        log.info("source %s: %s", source, message)

    def summary(self) -> dict:
        status = Counter(f["status"] for f in self.files)
        return {
            "files": dict(status),
            "record_errors": sum(len(f["record_errors"]) for f in self.files),
            "kept": {s: dict(c) for s, c in self.kept.items()},
            "dropped": {s: dict(c) for s, c in self.dropped.items()},
            "warnings": self.warnings,
            "notes": self.notes,
        }

    def save(self, path: Path) -> None:
        with open(path, "w", encoding="utf-8") as out:  # streamed: no copy of a report of a million files in memory
            json.dump({"summary": self.summary(), "files": self.files}, out, indent=1)

    def log_summary(self) -> None:
        s = self.summary()
        empty = [Path(f["path"]).name for f in self.files if f["status"] == "empty"]
        if empty:
            log.warning("%d file%s without trainable text (empty, or front matter only) skipped: %s%s; each is listed "
                        "in report.json", len(empty), "s" if len(empty) > 1 else "", ", ".join(empty[:5]),
                        f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        log.info("files: %s; record errors: %d", ", ".join(f"{v} {k}" for k, v in s["files"].items()) or "none",
                 s["record_errors"])
        for source in sorted(set(s["kept"]) | set(s["dropped"])):
            kept, dropped = s["kept"].get(source, {}), s["dropped"].get(source, {})
            log.info("source %s: kept %d train / %d val documents; dropped %s", source, kept.get("train", 0),
                     kept.get("val", 0), ", ".join(f"{n} {r}" for r, n in sorted(dropped.items())) or "none")
