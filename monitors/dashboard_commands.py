"""`na64daq dashboards build|check|push` (parsing and printing only)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from daq.errors import ConfigError


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the dashboards subcommand to the na64daq parser."""
    p = sub.add_parser("dashboards", help="generate, check and push the Grafana dashboards, "
                       "Prometheus configuration and rules, and the compose file",
                       description="Everything under deploy/prometheus, deploy/grafana and "
                       "deploy/compose.yaml is generated from monitors/dashboards/.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, helptext, func in (
            ("build", "write the generated files", _build),
            ("check", "exit 1 if a generated file differs from what the code generates",
             _check)):
        v = verbs.add_parser(name, help=helptext)
        v.add_argument("--deploy", type=Path, default=Path("deploy"),
                       help="deploy directory (default ./deploy)")
        v.add_argument("--topology", type=Path, default=None,
                       help="topology TOML (default DEPLOY/topology.toml)")
        v.add_argument("--host", action="append", default=[], metavar="SERVICE=HOST",
                       help="scrape SERVICE on HOST (repeat; default: the topology's "
                       "metrics address for all)")
        v.set_defaults(func=func)
    u = verbs.add_parser("push", help="upload the dashboards and run annotations to a Grafana")
    u.add_argument("--url", default=os.environ.get("GRAFANA_URL"),
                   help="Grafana URL (default $GRAFANA_URL)")
    u.add_argument("--token-file", type=Path, default=None, help=(
        "file holding a Grafana service-account token (default $GRAFANA_TOKEN; there is no "
        "token option: it would end up in shell history and ps)"))
    u.add_argument("--runs", type=Path, default=None,
                   help="run control's runs/ directory: one annotation per run")
    u.add_argument("--dry-run", action="store_true",
                   help="print the API payloads as JSON instead of sending them")
    u.set_defaults(func=_push)


def _target(a: argparse.Namespace) -> tuple[Any, dict[str, str]]:
    from daq.stack import load_stack_config

    cfg = load_stack_config(a.topology or a.deploy / "topology.toml")
    hosts = {}
    for h in a.host:
        service, sep, host = h.partition("=")
        if not sep or not host:
            raise ConfigError("--host", h, "SERVICE=HOST")
        hosts[service] = host
    return cfg, hosts


def _build(a: argparse.Namespace) -> int:
    from monitors.dashboards.files import build

    cfg, hosts = _target(a)
    for p in build(a.deploy, cfg, hosts=hosts):
        print(f"wrote {p}")
    return 0


def _check(a: argparse.Namespace) -> int:
    from monitors.dashboards.files import check

    cfg, hosts = _target(a)
    stale = check(a.deploy, cfg, hosts=hosts)
    for p in stale:
        print(f"differs from the generator: {p}", file=sys.stderr)
    if stale:
        print("run `na64daq dashboards build` and commit the result", file=sys.stderr)
    return 1 if stale else 0


def _push(a: argparse.Namespace) -> int:
    from monitors.dashboards import push as P
    from monitors.dashboards.catalog import DASHBOARDS

    runs = P.read_runs(a.runs) if a.runs is not None else []
    if a.dry_run:
        print(json.dumps({
            "dashboards": [P.dashboard_payload(d, message="na64daq dashboards push")
                           for d in DASHBOARDS],
            "annotations": [P.annotation_payload(r) for r in runs]}, indent=2))
        return 0
    if not a.url:
        raise ConfigError("--url", None, "a Grafana URL (or $GRAFANA_URL)")
    token = (a.token_file.read_text().strip() if a.token_file is not None
             else os.environ.get("GRAFANA_TOKEN"))
    from grafana_client.client import GrafanaException

    try:
        report = P.push(P.connect(a.url, token), DASHBOARDS, runs)
    except (GrafanaException, OSError) as e:  # niquests errors are OSErrors
        print(f"dashboards push: Grafana at {a.url} refused or did not answer: {e}",
              file=sys.stderr)
        return 2
    print(f"pushed {len(report.dashboards)} dashboards to {a.url}; run annotations: "
          f"{len(report.annotations_added)} added, {len(report.annotations_updated)} updated")
    return 0
