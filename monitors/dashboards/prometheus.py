"""Prometheus scrape configuration from a topology: one job per service, static targets.

The deployed deploy/prometheus/prometheus.yml and the configuration the integration tests
run are both rendered here from a StackConfig's MetricsPorts, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from daq.errors import ConfigError
from daq.stack import SERVICES, StackConfig

#: Prometheus job name of every service (the `job` label the rules and dashboards select on).
JOBS: tuple[str, ...] = SERVICES
RULE_FILES = ("rules/na64-records.yml", "rules/na64-alerts.yml")


def targets(cfg: StackConfig, *, hosts: Mapping[str, str] | None = None,
            services: Iterable[str] | None = None) -> dict[str, list[str]]:
    """`host:port` of each service's /metrics, by job; trigger has one target per worker.

    `hosts` maps a service to the host Prometheus reaches it on (default: the topology's
    metrics address, all on one host); `services` restricts the jobs (default: all).
    """
    chosen = tuple(JOBS if services is None else services)
    for s in chosen:
        if s not in JOBS:
            raise ConfigError("service", s, f"one of {', '.join(JOBS)}")
    hosts = dict(hosts or {})
    for s in hosts:
        if s not in JOBS:
            raise ConfigError("hosts", s, f"keys are services: {', '.join(JOBS)}")
    addr = cfg.metrics.addr if cfg.metrics.addr not in ("0.0.0.0", "::") else "127.0.0.1"
    out: dict[str, list[str]] = {}
    for job in chosen:
        n = cfg.workers if job == "trigger" else 1
        ports = [cfg.metrics.port(job, i) for i in range(n)]
        if any(p == 0 for p in ports):
            raise ConfigError(f"metrics.{job}", 0, "a fixed port is needed to scrape it")
        out[job] = [f"{hosts.get(job, addr)}:{p}" for p in ports]
    return out


def config(cfg: StackConfig, *, scrape_interval: str = "5s", evaluation_interval: str = "5s",
           rule_files: Sequence[str] = RULE_FILES, hosts: Mapping[str, str] | None = None,
           services: Iterable[str] | None = None) -> dict[str, Any]:
    """The prometheus.yml document (a dict) for the topology `cfg`."""
    return {
        "global": {"scrape_interval": scrape_interval,
                   "evaluation_interval": evaluation_interval,
                   "external_labels": {"experiment": "na64"}},
        "rule_files": list(rule_files),
        "scrape_configs": [
            {"job_name": job,
             "static_configs": [{"targets": tg}]}
            for job, tg in targets(cfg, hosts=hosts, services=services).items()
        ],
    }
