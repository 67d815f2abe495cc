"""deploy/compose.yaml as data: Prometheus, Grafana, Mosquitto and one container per service.

Every container uses the host network, so the topology's loopback endpoints and /metrics
ports (deploy/topology.toml) work unchanged on one host and Prometheus scrapes exactly the
targets of prometheus.yml. Across hosts, each host runs the services it owns (see
deploy/README.md).
"""

from __future__ import annotations

from typing import Any

from daq.stack import StackConfig

PROMETHEUS_IMAGE = "prom/prometheus:v2.42.0"
GRAFANA_IMAGE = "grafana/grafana-oss:10.4.2"
MOSQUITTO_IMAGE = "eclipse-mosquitto:2.0.18"
NA64_IMAGE = "na64-daq:${NA64_VERSION:-latest}"
#: the topology's run_dir ("../runs") is relative to the file: /etc/na64/../runs
RUNS_IN_CONTAINER = "/etc/runs"
_DOCKERFILE = (
    "FROM python:3.11-slim\n"
    "COPY . /src\n"
    "RUN pip install --no-cache-dir '/src[grafana]' && useradd --system na64\n"
    "USER na64\n"
)


def _na64(command: list[str], *, depends: list[str], extra_volumes: list[str] | None = None,
          profiles: list[str] | None = None) -> dict[str, Any]:
    svc: dict[str, Any] = {
        "image": NA64_IMAGE, "network_mode": "host", "restart": "unless-stopped",
        "command": command,
        "env_file": [{"path": "/etc/na64/na64.env", "required": False}],
        "volumes": ["./topology.toml:/etc/na64/topology.toml:ro", *(extra_volumes or [])],
        "stop_grace_period": "30s",  # services drain what is in flight on SIGTERM
    }
    if depends:
        svc["depends_on"] = depends
    if profiles:
        svc["profiles"] = profiles
    return svc


def compose(cfg: StackConfig) -> dict[str, Any]:
    """The compose document for topology `cfg` (its worker count sets the trigger services)."""
    serve = ["na64daq", "serve"]
    conf = ["--config", "/etc/na64/topology.toml"]
    runs = f"${{NA64_RUN_DIR:-/data/na64/runs}}:{RUNS_IN_CONTAINER}"
    workers = [f"trigger-{i}" for i in range(cfg.workers)]
    services: dict[str, Any] = {
        "mosquitto": {
            "image": MOSQUITTO_IMAGE, "network_mode": "host", "restart": "unless-stopped",
            # `na64daq broker init /etc/mosquitto/na64` writes the configuration, ACL,
            # passwords and TLS material there; the container sees it at the same path
            "command": ["mosquitto", "-c", "/etc/mosquitto/na64/mosquitto.conf"],
            "volumes": ["/etc/mosquitto/na64:/etc/mosquitto/na64:ro",
                        "mosquitto-data:/var/lib/mosquitto",
                        "mosquitto-log:/var/log/mosquitto"],
        },
        "prometheus": {
            "image": PROMETHEUS_IMAGE, "network_mode": "host", "restart": "unless-stopped",
            "command": ["--config.file=/etc/prometheus/prometheus.yml",
                        "--storage.tsdb.path=/prometheus",
                        "--storage.tsdb.retention.time=90d",
                        "--web.listen-address=:9090", "--web.enable-lifecycle"],
            "volumes": ["./prometheus:/etc/prometheus:ro", "prometheus-data:/prometheus"],
        },
        "grafana": {
            "image": GRAFANA_IMAGE, "network_mode": "host", "restart": "unless-stopped",
            "depends_on": ["prometheus"],
            "environment": {
                "GF_SERVER_HTTP_PORT": "3000",
                "GF_SECURITY_ADMIN_PASSWORD__FILE": "/run/secrets/grafana_admin_password",
                "GF_AUTH_ANONYMOUS_ENABLED": "true",
                "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
                "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH":
                    "/var/lib/grafana/dashboards/na64/na64-shift.json",
            },
            "secrets": ["grafana_admin_password"],
            "volumes": ["./grafana/provisioning:/etc/grafana/provisioning:ro",
                        "./grafana/dashboards:/var/lib/grafana/dashboards/na64:ro",
                        "grafana-data:/var/lib/grafana"],
        },
        "builder": _na64([*serve, "builder", *conf], depends=[]),
        "recorder": _na64([*serve, "recorder", *conf], depends=[], extra_volumes=[runs]),
        # the monitor keeps the spills it closed in run_dir (a restart does not count twice)
        "monitor": _na64([*serve, "monitor", *conf], depends=["mosquitto"],
                         extra_volumes=[runs]),
    }
    for i, name in enumerate(workers):
        services[name] = _na64([*serve, "trigger", *conf, "--index", str(i)],
                               depends=["builder", "recorder", "monitor"])
    # run control drives every service's lifecycle over the topology's command channel
    # (endpoints.control) and takes `na64daq ctl` over MQTT; its state (run numbers, the
    # active trigger configuration, the audit trail) persists under run_dir/control
    services["control"] = _na64([*serve, "control", *conf], depends=["mosquitto"],
                                extra_volumes=[runs])
    # standing front ends: they send only when run control starts a run
    services["frontend"] = _na64([*serve, "frontend", *conf], depends=[*workers, "control"],
                                 profiles=["simulator"])
    services["builder"]["build"] = {"context": "..", "dockerfile_inline": _DOCKERFILE}
    return {
        "name": "na64-daq",
        "services": services,
        "volumes": {v: {} for v in ("mosquitto-data", "mosquitto-log", "prometheus-data",
                                    "grafana-data")},
        "secrets": {"grafana_admin_password": {"file": "/etc/na64/grafana_admin_password"}},
    }


def service_of_job(job: str, cfg: StackConfig) -> list[str]:
    """Compose services that serve Prometheus job `job`."""
    if job == "trigger":
        return [f"trigger-{i}" for i in range(cfg.workers)]
    return [job]
