"""deploy/compose.yaml as data: Prometheus, Grafana, Mosquitto and one container per service.

Every container uses the host network, so the topology's loopback endpoints and /metrics
ports (deploy/topology.toml) work unchanged on one host and Prometheus scrapes exactly the
targets of prometheus.yml. Across hosts, each host runs the services it owns (see
deploy/README.md).

Every container has a healthcheck with the tools its image has (the DAQ image: Python, no
curl; Prometheus and Grafana: busybox wget; Mosquitto: busybox grep), and each waits for
the ones upstream of it in the data flow to be healthy (`condition: service_healthy`).
"""

from __future__ import annotations

from typing import Any

from daq.errors import ConfigError
from daq.stack import StackConfig

PROMETHEUS_IMAGE = "prom/prometheus:v2.42.0"
GRAFANA_IMAGE = "grafana/grafana-oss:10.4.2"
MOSQUITTO_IMAGE = "eclipse-mosquitto:2.0.18"
NA64_IMAGE = "na64-daq:${NA64_VERSION:-latest}"
#: the topology's run_dir ("../runs") is relative to the file: /etc/na64/../runs
RUNS_IN_CONTAINER = "/etc/runs"
PROMETHEUS_PORT = 9090
GRAFANA_PORT = 3000
#: the broker's plain listener on loopback (deploy/mosquitto/mosquitto.conf)
MOSQUITTO_PORT = 1883
_DOCKERFILE = (
    "FROM python:3.11-slim\n"
    "COPY . /src\n"
    "RUN pip install --no-cache-dir '/src[grafana]' && useradd --system na64\n"
    "USER na64\n"
)


def _check(test: list[str], start_period: str = "30s") -> dict[str, Any]:
    """A compose healthcheck running `test` (exec form: no shell needed in the image)."""
    return {"test": ["CMD", *test], "interval": "10s", "timeout": "5s", "retries": 3,
            "start_period": start_period}


def metrics_healthcheck(cfg: StackConfig, service: str, index: int = 0) -> dict[str, Any]:
    """Healthy while the service answers on its /metrics port (the DAQ image has Python
    and no curl). The port is served first, the data sockets bound right after; the
    trigger compiles its kernels at the first start, hence the long start period."""
    port = cfg.metrics.port(service, index)
    if port == 0:
        raise ConfigError(f"metrics.{service}", 0, "a fixed port (the healthcheck of "
                          "compose.yaml fetches /metrics there)")
    host = "127.0.0.1" if cfg.metrics.addr in ("0.0.0.0", "::") else cfg.metrics.addr
    url = f"http://{host}:{port}/metrics"
    return _check(["python", "-c", f"import urllib.request; urllib.request.urlopen("
                   f"'{url}', timeout=4).read()"], "120s")


def wget_healthcheck(url: str) -> dict[str, Any]:
    """Healthy while `url` answers 2xx (busybox wget of the Prometheus and Grafana images)."""
    return _check(["wget", "-q", "-O", "/dev/null", url])


def mosquitto_healthcheck(port: int = MOSQUITTO_PORT) -> dict[str, Any]:
    """Healthy while the broker listens on 127.0.0.1:`port` (/proc/net/tcp: 0A is LISTEN).
    A subscription would need an account, and the image has no credentials."""
    return _check(["grep", "-q", f": 0100007F:{port:04X} 00000000:0000 0A ", "/proc/net/tcp"])


def _healthy(*names: str) -> dict[str, dict[str, str]]:
    return {n: {"condition": "service_healthy"} for n in names}


def _na64(command: list[str], *, healthcheck: dict[str, Any], depends: list[str],
          extra_volumes: list[str] | None = None,
          profiles: list[str] | None = None) -> dict[str, Any]:
    svc: dict[str, Any] = {
        "image": NA64_IMAGE, "network_mode": "host", "restart": "unless-stopped",
        "command": command,
        "env_file": [{"path": "/etc/na64/na64.env", "required": False}],
        "volumes": ["./topology.toml:/etc/na64/topology.toml:ro", *(extra_volumes or [])],
        "stop_grace_period": "30s",  # services drain what is in flight on SIGTERM
        "healthcheck": healthcheck,
    }
    if depends:
        svc["depends_on"] = _healthy(*depends)
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
            "healthcheck": mosquitto_healthcheck(),
        },
        "prometheus": {
            "image": PROMETHEUS_IMAGE, "network_mode": "host", "restart": "unless-stopped",
            "command": ["--config.file=/etc/prometheus/prometheus.yml",
                        "--storage.tsdb.path=/prometheus",
                        "--storage.tsdb.retention.time=90d",
                        f"--web.listen-address=:{PROMETHEUS_PORT}", "--web.enable-lifecycle"],
            "volumes": ["./prometheus:/etc/prometheus:ro", "prometheus-data:/prometheus"],
            "healthcheck": wget_healthcheck(f"http://127.0.0.1:{PROMETHEUS_PORT}/-/ready"),
        },
        "grafana": {
            "image": GRAFANA_IMAGE, "network_mode": "host", "restart": "unless-stopped",
            "depends_on": _healthy("prometheus"),
            "environment": {
                "GF_SERVER_HTTP_PORT": str(GRAFANA_PORT),
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
            "healthcheck": wget_healthcheck(f"http://127.0.0.1:{GRAFANA_PORT}/api/health"),
        },
        "builder": _na64([*serve, "builder", *conf], depends=[],
                         healthcheck=metrics_healthcheck(cfg, "builder")),
        "recorder": _na64([*serve, "recorder", *conf], depends=[], extra_volumes=[runs],
                          healthcheck=metrics_healthcheck(cfg, "recorder")),
        # the monitor keeps the spills it closed in run_dir (a restart does not count twice)
        "monitor": _na64([*serve, "monitor", *conf], depends=["mosquitto"],
                         extra_volumes=[runs], healthcheck=metrics_healthcheck(cfg, "monitor")),
    }
    for i, name in enumerate(workers):
        services[name] = _na64([*serve, "trigger", *conf, "--index", str(i)],
                               depends=["builder", "recorder", "monitor"],
                               healthcheck=metrics_healthcheck(cfg, "trigger", i))
    # run control drives every service's lifecycle over the topology's command channel
    # (endpoints.control) and takes `na64daq ctl` over MQTT; its state (run numbers, the
    # active trigger configuration, the audit trail) persists under run_dir/control
    services["control"] = _na64([*serve, "control", *conf], depends=["mosquitto"],
                                extra_volumes=[runs],
                                healthcheck=metrics_healthcheck(cfg, "control"))
    # standing front ends: they send only when run control starts a run
    services["frontend"] = _na64([*serve, "frontend", *conf], depends=[*workers, "control"],
                                 profiles=["simulator"],
                                 healthcheck=metrics_healthcheck(cfg, "frontend"))
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
