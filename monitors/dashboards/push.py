"""Push the generated dashboards and the runs (as annotations) to a Grafana.

The payloads are built by pure functions; `push` takes the API object (grafana-client's
GrafanaApi, or a twin with the same attributes in tests) and does only the calls.
Runs come from run control's records (`<state-dir>/runs/run-NNNNNN.json`, docs/control.md):
one region annotation per run, tagged `na64-run` and `run-NNNNNN`, shown on every dashboard
by its "Runs (run control)" annotation query. Pushing twice updates, never duplicates.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daq.errors import ConfigError
from monitors.dashboards.grafana import RUN_TAG, dashboard_json
from monitors.dashboards.model import Dashboard

FOLDER_UID = "na64"
FOLDER_TITLE = "NA64"


@dataclass(frozen=True)
class RunMark:
    """What an annotation says about one run (times in Unix seconds)."""

    run: int
    started_at: float
    stopped_at: float | None
    started_by: str
    stop_reason: str | None = None
    events: int = 0
    spills: int = 0

    @property
    def tag(self) -> str:
        return f"run-{self.run:06d}"


def read_runs(directory: Path) -> list[RunMark]:
    """The run records in `directory` (run control's `runs/`), oldest first."""
    if not directory.is_dir():
        raise ConfigError("runs", str(directory), "a directory of run-NNNNNN.json records")
    out = []
    for p in sorted(directory.glob("run-*.json")):
        try:
            d = json.loads(p.read_text())
            out.append(RunMark(int(d["run"]), float(d["started_at"]),
                               None if d.get("stopped_at") is None else float(d["stopped_at"]),
                               str(d.get("started_by", "")), d.get("stop_reason"),
                               int(d.get("events", 0)), int(d.get("spills", 0))))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError("runs", str(p), f"a run record ({e})") from None
    return out


def dashboard_payload(d: Dashboard, *, message: str) -> dict[str, Any]:
    """The body of POST /api/dashboards/db for `d` (overwrites the same uid)."""
    return {"dashboard": {**dashboard_json(d), "id": None}, "folderUid": FOLDER_UID,
            "overwrite": True, "message": message}


def annotation_payload(r: RunMark) -> dict[str, Any]:
    """Keyword arguments of grafana-client's add/update_annotation for run `r`."""
    if r.stopped_at is None:
        text = f"Run {r.run} started by {r.started_by} (open)"
    else:
        text = (f"Run {r.run} started by {r.started_by}; stopped ({r.stop_reason or '-'}): "
                f"{r.events} events, {r.spills} spills")
    return {"time_from": int(r.started_at * 1000),
            "time_to": None if r.stopped_at is None else int(r.stopped_at * 1000),
            "tags": [RUN_TAG, r.tag], "text": text}


@dataclass
class PushReport:
    dashboards: list[str] = field(default_factory=list)
    annotations_added: list[int] = field(default_factory=list)
    annotations_updated: list[int] = field(default_factory=list)


def _ensure_folder(api: Any) -> None:
    from grafana_client.client import GrafanaClientError

    try:
        api.folder.get_folder(FOLDER_UID)
    except GrafanaClientError:
        api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)


def push(api: Any, dashboards: Iterable[Dashboard], runs: Sequence[RunMark] = (), *,
         message: str = "na64daq dashboards push") -> PushReport:
    """Upload every dashboard into folder NA64, then add or update one annotation per run."""
    api.health.check()  # fails fast (GrafanaException) when Grafana does not answer
    report = PushReport()
    _ensure_folder(api)
    for d in dashboards:
        api.dashboard.update_dashboard(dashboard_payload(d, message=message))
        report.dashboards.append(d.uid)
    for r in runs:
        body = annotation_payload(r)
        found = api.annotations.find_annotations(tags=[RUN_TAG, r.tag], limit=1)
        if found:
            api.annotations.update_annotation(found[0]["id"], **body)
            report.annotations_updated.append(r.run)
        else:
            api.annotations.add_annotation(**body)
            report.annotations_added.append(r.run)
    return report


def connect(url: str, token: str | None, *, timeout: float = 10.0) -> Any:
    """grafana-client's GrafanaApi for `url`, authenticated with a service-account token."""
    from grafana_client import GrafanaApi

    return GrafanaApi.from_url(url, credential=token, timeout=timeout)
