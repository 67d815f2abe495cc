"""Crash-safe persistence of run control: the state file, run snapshots and the audit log.

Layout of the state directory:

    state.json              ControlState (state, last run number, remembered command ids)
    runs/run-000123.json    the configuration snapshot and counts of each run
    audit.jsonl             append-only: every trigger request and activation, one per line

Whole files are replaced atomically (write a temporary file, fsync it, rename, fsync the
directory) so a crash leaves either the old or the new version, never a torn one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daq.control.state import ControlState, RunRecord
from daq.errors import DaqError


class StoreError(DaqError):
    """The state directory cannot be read or written."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Replace `path` with the JSON of `obj`, atomically and durably."""
    tmp = path.with_name(f".{path.name}.tmp")
    data = json.dumps(obj, sort_keys=True, indent=1).encode()
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class StateStore:
    """The run-control state directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.state_path = self.dir / "state.json"
        self.audit_path = self.dir / "audit.jsonl"
        self.runs_dir = self.dir / "runs"
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(self.dir, f"cannot create state directory: {e}") from None

    def load(self) -> ControlState:
        """The persisted state, or a fresh idle one when there is none yet."""
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return ControlState()
        except OSError as e:
            raise StoreError(self.state_path, f"cannot read: {e}") from None
        try:
            return ControlState.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError) as e:
            # a torn state file cannot happen (atomic rename); a corrupt one must not be
            # papered over by starting again at run 1
            raise StoreError(self.state_path, f"corrupt state file: {e!r}") from None

    def save(self, state: ControlState) -> None:
        atomic_write_json(self.state_path, state.to_json())
        if state.run is not None:
            self.save_run(state.run)

    def save_run(self, run: RunRecord) -> None:
        atomic_write_json(self.run_path(run.run), run.to_json())

    def run_path(self, run: int) -> Path:
        return self.runs_dir / f"run-{run:06d}.json"

    def load_run(self, run: int) -> RunRecord:
        try:
            return RunRecord.from_json(json.loads(self.run_path(run).read_bytes()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StoreError(self.run_path(run), f"cannot read run record: {e!r}") from None

    def append_audit(self, entry: Mapping[str, Any]) -> None:
        """Append one entry to the audit log and fsync it (opened O_APPEND: never rewritten)."""
        line = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
        fd = os.open(self.audit_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_audit(self, last: int | None = None) -> list[dict[str, Any]]:
        """Audit entries, oldest first; a torn last line (crash mid-append) is skipped."""
        try:
            lines = self.audit_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out[-last:] if last else out
