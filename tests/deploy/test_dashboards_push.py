"""`na64daq dashboards push` without a Grafana: the payloads, and grafana-client over real HTTP
against a minimal stand-in that answers the few endpoints push uses (a real Grafana server
cannot be installed on the build machines)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from daq.cli import main
from monitors.dashboards import push as P
from monitors.dashboards.catalog import DASHBOARDS
from monitors.dashboards.grafana import RUN_TAG

pytest.importorskip("grafana_client")


def _runs(tmp_path: Path) -> Path:
    d = tmp_path / "runs"
    d.mkdir()
    (d / "run-000007.json").write_text(json.dumps({
        "run": 7, "snapshot": {}, "started_by": "shift1", "started_at": 1_700_000_000.5,
        "stopped_at": 1_700_000_600.0, "stop_reason": "end of fill", "events": 12, "spills": 3}))
    (d / "run-000008.json").write_text(json.dumps({
        "run": 8, "snapshot": {}, "started_by": "shift1", "started_at": 1_700_000_700.0,
        "stopped_at": None, "stop_reason": None, "events": 0, "spills": 0}))
    return d


def test_payloads(tmp_path: Path) -> None:
    runs = P.read_runs(_runs(tmp_path))
    assert [r.run for r in runs] == [7, 8]
    a = P.annotation_payload(runs[0])
    assert a == {"time_from": 1_700_000_000_500, "time_to": 1_700_000_600_000,
                 "tags": [RUN_TAG, "run-000007"],
                 "text": "Run 7 started by shift1; stopped (end of fill): 12 events, 3 spills"}
    assert P.annotation_payload(runs[1])["time_to"] is None
    body = P.dashboard_payload(DASHBOARDS[0], message="m")
    assert body["overwrite"] is True and body["folderUid"] == P.FOLDER_UID
    assert body["dashboard"]["uid"] == "na64-shift" and body["dashboard"]["id"] is None


class _Grafana(BaseHTTPRequestHandler):
    """Answers what push calls; records (method, path, body, auth) in server.calls."""

    def _reply(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body: Any = json.loads(self.rfile.read(n)) if n else {}
        srv: Any = self.server
        srv.calls.append((method, self.path, body, self.headers.get("Authorization")))
        if self.path == "/api/frontend/settings":
            return self._reply(200, {"buildInfo": {"version": "10.4.2"}})
        if self.path.startswith("/api/folders/"):
            return self._reply(200 if srv.folder else 404, {"uid": "na64"} if srv.folder
                               else {"message": "folder not found"})
        if self.path == "/api/folders":
            srv.folder = True
            return self._reply(200, {"uid": body["uid"]})
        if self.path == "/api/dashboards/db":
            return self._reply(200, {"status": "success", "uid": body["dashboard"]["uid"]})
        if self.path.startswith("/api/annotations?"):
            tag = self.path.split("tags=")[-1].split("&")[0]
            return self._reply(200, [{"id": i} for i, t in srv.annotations.items() if t == tag])
        if self.path == "/api/annotations":
            i = len(srv.annotations) + 1
            srv.annotations[i] = body["tags"][1]
            return self._reply(200, {"id": i})
        if self.path.startswith("/api/annotations/"):
            return self._reply(200, {"message": "updated"})
        return self._reply(404, {"message": "not found"})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def grafana() -> Iterator[Any]:
    srv: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Grafana)
    srv.calls, srv.folder, srv.annotations = [], False, {}
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def test_push_over_http_is_idempotent(grafana: Any, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{grafana.server_address[1]}"
    runs = P.read_runs(_runs(tmp_path))
    api = P.connect(url, "tok-123", timeout=5)
    report = P.push(api, DASHBOARDS, runs)
    assert report.dashboards == [d.uid for d in DASHBOARDS]
    assert report.annotations_added == [7, 8] and report.annotations_updated == []
    assert all(auth == "Bearer tok-123" for *_, auth in grafana.calls)
    posted = [b for m, p, b, _ in grafana.calls if p == "/api/dashboards/db"]
    assert [b["dashboard"]["uid"] for b in posted] == [d.uid for d in DASHBOARDS]
    assert ("POST", "/api/folders") in [(m, p) for m, p, *_ in grafana.calls]
    ann = [b for m, p, b, _ in grafana.calls if (m, p) == ("POST", "/api/annotations")]
    assert ann[0]["time"] == 1_700_000_000_500 and ann[0]["tags"] == [RUN_TAG, "run-000007"]
    grafana.calls.clear()
    again = P.push(api, DASHBOARDS, runs)  # the second push updates, never duplicates
    assert again.annotations_added == [] and again.annotations_updated == [7, 8]
    assert ("POST", "/api/folders") not in [(m, p) for m, p, *_ in grafana.calls]


def test_cli_push(grafana: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                  monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{grafana.server_address[1]}"
    token = tmp_path / "token"
    token.write_text("tok-9\n")
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    assert main(["dashboards", "push", "--url", url, "--token-file", str(token),
                 "--runs", str(_runs(tmp_path))]) == 0
    assert "pushed 4 dashboards" in capsys.readouterr().out
    assert {auth for *_, auth in grafana.calls} == {"Bearer tok-9"}
    assert main(["dashboards", "push", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["dashboards"]) == 4 and out["annotations"] == []


def test_cli_push_without_grafana(capsys: pytest.CaptureFixture[str]) -> None:
    from prom_stack import free_ports

    url = f"http://127.0.0.1:{free_ports(1)}"  # nothing listens there
    assert main(["dashboards", "push", "--url", url]) == 2
    assert "did not answer" in capsys.readouterr().err


def test_cli_build_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deploy = Path(__file__).resolve().parents[2] / "deploy"
    topo = str(deploy / "topology.toml")
    assert main(["dashboards", "check", "--deploy", str(deploy)]) == 0
    assert main(["dashboards", "check", "--deploy", str(tmp_path), "--topology", topo]) == 1
    assert "differs" in capsys.readouterr().err
    assert main(["dashboards", "build", "--deploy", str(tmp_path), "--topology", topo,
                 "--host", "monitor=mon1"]) == 0
    assert "mon1:9103" in (tmp_path / "prometheus/prometheus.yml").read_text()
    assert main(["dashboards", "check", "--deploy", str(tmp_path), "--topology", topo,
                 "--host", "monitor=mon1"]) == 0
