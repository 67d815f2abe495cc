"""Grafana JSON models and provisioning files from the dashboard descriptions (pure)."""

from __future__ import annotations

from typing import Any

from monitors.dashboards.model import Annotation, Dashboard, Panel

DATASOURCE_UID = "na64-prometheus"
DATASOURCE = {"type": "prometheus", "uid": DATASOURCE_UID}
SCHEMA_VERSION = 39
#: monitor counters move at spill close (~16.8 s apart): rates over at least two spills
MIN_INTERVAL = "30s"
_REF = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: tag of the run annotations `na64daq dashboards push` posts from run control's records
RUN_TAG = "na64-run"


def _panel(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": p.unit}
    if p.lo is not None:
        defaults["min"] = p.lo
    if p.hi is not None:
        defaults["max"] = p.hi
    if p.thresholds is not None:
        defaults["thresholds"] = {"mode": "absolute", "steps": [
            {"value": v, "color": c} for v, c in p.thresholds]}
        defaults["color"] = {"mode": "thresholds"}
        if p.kind == "timeseries":  # the band as dashed lines, the series keep their colours
            defaults["color"] = {"mode": "palette-classic"}
            defaults["custom"] = {"thresholdsStyle": {"mode": "dashed"}}
    if p.mappings:
        defaults["mappings"] = [{"type": "value", "options": {
            v: {"text": t, "color": c, "index": i} for i, (v, t, c) in enumerate(p.mappings)}}]
    targets = [{"refId": _REF[i], "datasource": DATASOURCE, "expr": q.expr,
                "legendFormat": q.legend, "range": True, "instant": False}
               for i, q in enumerate(p.queries)]
    out: dict[str, Any] = {
        "id": pid, "type": p.kind, "title": p.title, "description": p.description,
        "datasource": DATASOURCE, "interval": MIN_INTERVAL,
        "gridPos": {"h": 8, "w": p.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": targets,
    }
    if p.kind == "stat":
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                            "values": False},
                          "colorMode": "value", "graphMode": "area"}
    elif p.kind == "heatmap":
        for t in targets:
            t["format"] = "heatmap"
        out["options"] = {"calculate": False, "yAxis": {"unit": p.unit},
                          "color": {"scheme": "Viridis", "mode": "scheme"},
                          "cellGap": 0}
    elif p.kind == "state-timeline":
        defaults["mappings"] = [{"type": "value", "options": {
            "0": {"text": "ok", "color": "green", "index": 0},
            "1": {"text": "RAISED", "color": "red", "index": 1}}}]
        defaults["color"] = {"mode": "thresholds"}
        defaults["thresholds"] = {"mode": "absolute", "steps": [
            {"value": None, "color": "green"}, {"value": 1, "color": "red"}]}
        out["options"] = {"showValue": "never", "mergeValues": True}
    else:
        out["options"] = {"legend": {"displayMode": "list", "placement": "bottom"},
                          "tooltip": {"mode": "multi"}}
    return out


def _annotation(a: Annotation) -> dict[str, Any]:
    # only the fields of Grafana's AnnotationQuery schema: Grafana's Prometheus annotation
    # then steps every 60 s, which is why the expressions look back a whole minute
    return {"name": a.name, "datasource": DATASOURCE, "enable": True, "iconColor": a.color,
            "expr": a.expr}


def dashboard_json(d: Dashboard) -> dict[str, Any]:
    """The Grafana JSON model of `d` (what a file-provisioned dashboard holds)."""
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row in d.rows:
        panels.append({"id": pid, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y, x, height = pid + 1, y + 1, 0, 0
        for p in row.panels:
            if x + p.width > 24:
                x, y = 0, y + 8
            panels.append(_panel(p, pid, x, y))
            pid, x, height = pid + 1, x + p.width, 8
        y += height
    # Grafana adds its built-in "Annotations & Alerts" query itself when a dashboard lacks
    # it; its `builtIn` flag is not part of the published schema, so it is not written here
    runs = {"name": "Runs (run control)", "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "iconColor": "blue",
            "target": {"type": "tags", "tags": [RUN_TAG], "matchAny": False, "limit": 100}}
    return {
        "uid": d.uid, "title": d.title, "description": d.description, "tags": list(d.tags),
        "timezone": "browser", "editable": False, "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION, "version": 1, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "annotations": {"list": [runs, *(_annotation(a) for a in d.annotations)]},
        "templating": {"list": [{
            "name": "source", "label": "source", "type": "custom", "query": "live,replay",
            "current": {"text": "live", "value": "live", "selected": True},
            "options": [{"text": v, "value": v, "selected": v == "live"}
                        for v in ("live", "replay")],
            "hide": 0, "multi": False, "includeAll": False,
            "description": "live data, or a replay (never mixed)"}]},
        "panels": panels,
        "links": [{"type": "dashboards", "tags": ["na64"], "asDropdown": True,
                   "title": "NA64", "includeVars": True, "keepTime": True}],
    }


def datasource_provisioning(url: str = "http://127.0.0.1:9090",
                            scrape_interval: str = "5s") -> dict[str, Any]:
    """Grafana's provisioning/datasources file: Prometheus under the fixed uid."""
    return {"apiVersion": 1, "datasources": [{
        "name": "NA64 Prometheus", "type": "prometheus", "uid": DATASOURCE_UID,
        "access": "proxy", "url": url, "isDefault": True, "editable": False,
        "jsonData": {"timeInterval": scrape_interval, "httpMethod": "POST"}}]}


def dashboard_provisioning(path: str = "/var/lib/grafana/dashboards/na64") -> dict[str, Any]:
    """Grafana's provisioning/dashboards file: the generated JSON files, read-only."""
    return {"apiVersion": 1, "providers": [{
        "name": "na64", "orgId": 1, "folder": "NA64", "type": "file",
        "disableDeletion": True, "allowUiUpdates": False, "updateIntervalSeconds": 30,
        "options": {"path": path, "foldersFromFilesStructure": False}}]}
