"""The whole data path from one topology: build any service, alone or all in one process."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from daq.config import StrictModel
from daq.curve import CurveTopology
from daq.errors import ConfigError
from daq.geometry import Calibration, Geometry, load_calibration, load_geometry
from daq.inlet import limit_for, slice_bytes

SERVICES = ("frontend", "builder", "trigger", "recorder", "monitor", "control")
Endpoint = str
_EP = r"^(tcp|ipc|inproc)://.+$"


class Endpoints(StrictModel):
    """Where each stream is bound (builder, recorder, monitor and run control bind; the
    others connect)."""

    builder_in: Endpoint = Field(default="tcp://127.0.0.1:5550", pattern=_EP, max_length=256,
                                 description="Builder's PULL: every front end connects here.")
    builder_out: Endpoint = Field(default="tcp://127.0.0.1:5551", pattern=_EP, max_length=256,
                                  description="Builder's PUSH: trigger workers connect here.")
    recorder: Endpoint = Field(default="tcp://127.0.0.1:5552", pattern=_EP, max_length=256,
                               description="Recorder's PULL: workers send ACCEPTED here.")
    monitor: Endpoint = Field(default="tcp://127.0.0.1:5553", pattern=_EP, max_length=256,
                              description="Monitor's PULL: workers send FEATURES here.")
    control: Endpoint = Field(default="tcp://127.0.0.1:5554", pattern=_EP, max_length=256,
                              description="Run control's ROUTER: every service's command "
                              "channel (daq.agent) connects here.")

    def binders(self) -> dict[str, str]:
        """Each endpoint and the service that binds it (the CURVE server of that link)."""
        return {self.builder_in: "builder", self.builder_out: "builder",
                self.recorder: "recorder", self.monitor: "monitor", self.control: "control"}


class MetricsPorts(StrictModel):
    """The /metrics port of each service (0: pick a free port; trigger i uses trigger+i)."""

    addr: str = Field(default="127.0.0.1", min_length=1, max_length=253,
                      description="Address the /metrics servers listen on.")
    frontend: int = Field(default=9100, ge=0, le=65535, description="Simulator front ends.")
    builder: int = Field(default=9101, ge=0, le=65535, description="Event builder.")
    recorder: int = Field(default=9102, ge=0, le=65535, description="Recorder.")
    monitor: int = Field(default=9103, ge=0, le=65535, description="Monitors.")
    control: int = Field(default=9104, ge=0, le=65535, description="Run control.")
    trigger: int = Field(default=9110, ge=0, le=65535,
                         description="First trigger worker; worker i serves on trigger+i.")
    web: int | None = Field(default=None, ge=0, le=65535,
                            description="The monitor's shift page (HTTP, monitors.web) on "
                            "this port; 0: a free port; None: no page.")

    def port(self, service: str, index: int = 0) -> int:
        base = int(getattr(self, service))
        return base + index if (service == "trigger" and base) else base


class SimulatorSection(StrictModel):
    """The simulated beam that feeds the front ends when there is no hardware."""

    spills: int = Field(default=10, ge=1, le=10_000_000, description="Spills to send, then stop.")
    pace: Literal["max", "realtime", "factor"] = Field(
        default="max", description="max: no pacing; realtime: SPS timing; factor: faster.")
    factor: float = Field(default=1.0, gt=0, le=1e6,
                          description="Time compression with pace=factor.")
    sim: dict[str, Any] = Field(default_factory=dict,
                                description="simulators.config.SimConfig fields to override.")
    faults: dict[str, Any] = Field(default_factory=dict,
                                   description="simulators.config.FaultConfig fields.")


class IngressSection(StrictModel):
    """Limits on what every ZeroMQ input takes in (daq.inlet)."""

    max_message_bytes: int | None = Field(
        default=None, ge=1 << 16, le=1 << 40,
        description="Largest message any input takes (libzmq's MAXMSGSIZE, before it "
        "allocates; the inlet checks inproc too). None: twice the largest built waveform "
        "slice of the geometry at `slice_events` events, rounded up to a MiB "
        "(daq.inlet.limit_for).")
    slice_events: int = Field(default=4096, ge=1, le=1 << 20,
                              description="Events in the largest slice a front end sends "
                              "(the simulator's slice_events).")

    def limit(self, geometry: Geometry, slice_events: int) -> int:
        """The configured limit, or the one computed from the geometry."""
        if self.max_message_bytes is not None:
            return self.max_message_bytes
        channels = sum(len(b.channels) for b in geometry.boards)
        largest = slice_bytes(slice_events, geometry.detector.samples, channels,
                              len(geometry.boards))
        return limit_for(largest)


class StackConfig(StrictModel):
    """One topology file for `na64daq up`, `serve` and `demo`."""

    geometry: str | None = Field(default=None, max_length=4096,
                                 description="Geometry TOML (default: the shipped one).")
    calibration: str | None = Field(default=None, max_length=4096,
                                    description="Calibration TOML (default: the shipped one).")
    run_dir: str = Field(default="runs", min_length=1, max_length=4096,
                         description="Directory of the recorder's run files.")
    workers: int = Field(default=2, ge=1, le=64, description="Number of trigger workers.")
    endpoints: Endpoints = Field(default_factory=Endpoints, description="Stream endpoints.")
    metrics: MetricsPorts = Field(default_factory=MetricsPorts, description="/metrics ports.")
    simulator: SimulatorSection = Field(default_factory=SimulatorSection,
                                        description="The simulated beam.")
    builder: dict[str, Any] = Field(default_factory=dict,
                                    description="daq.builder.BuilderConfig fields to override.")
    monitor: dict[str, Any] = Field(default_factory=dict,
                                    description="monitors.config.MonitorConfig fields.")
    recorder_max_bytes: int | None = Field(default=None, ge=1 << 16, le=1 << 44,
                                           description="Rotate run files at this size.")
    mqtt: str | None = Field(default=None, pattern=r"^mqtt://.+$", max_length=512,
                             description="Broker URL for status, alarms and run control; "
                             "credentials come from NA64_MQTT_USERNAME/NA64_MQTT_PASSWORD.")
    curve: CurveTopology = Field(default_factory=CurveTopology,
                                 description="CURVE on every TCP link (daq.curve).")
    ingress: IngressSection = Field(default_factory=IngressSection,
                                    description="Limits of every ZeroMQ input.")

    def max_message_bytes(self, geometry: Geometry) -> int:
        """Every input's message size limit: `ingress.max_message_bytes`, or computed from
        the geometry and the largest slice (`ingress.slice_events`, or the simulator's
        slice_events when it is larger)."""
        simulated = self.simulator.sim.get("slice_events")
        events = max(self.ingress.slice_events, simulated if isinstance(simulated, int) else 0)
        return self.ingress.limit(geometry, events)

    def inproc(self, tag: str = "demo") -> StackConfig:
        """The same topology on in-process transports (one process, one zmq context)."""
        eps = Endpoints(builder_in=f"inproc://{tag}-builder-in",
                        builder_out=f"inproc://{tag}-builder-out",
                        recorder=f"inproc://{tag}-recorder", monitor=f"inproc://{tag}-monitor",
                        control=f"inproc://{tag}-control")
        return self.model_copy(update={"endpoints": eps})


def load_stack_config(path: str | Path) -> StackConfig:
    """Read a topology TOML; relative paths in it are relative to the file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as e:
        raise ConfigError("config", str(p), f"cannot be read ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", str(p), f"is not valid TOML ({e})") from None
    cfg = StackConfig.parse(data)
    base = p.resolve().parent
    update: dict[str, Any] = {}
    for key in ("geometry", "calibration", "run_dir"):
        v = getattr(cfg, key)
        if v is not None and not Path(v).is_absolute():
            update[key] = str(base / v)
    update["curve"] = cfg.curve.relative_to(base)
    return cfg.model_copy(update=update)


class Detector:
    """Geometry and calibration, loaded once for all services of a process."""

    def __init__(self, cfg: StackConfig) -> None:
        self.geometry: Geometry = load_geometry(cfg.geometry)
        self.calibration: Calibration = load_calibration(self.geometry, cfg.calibration)
