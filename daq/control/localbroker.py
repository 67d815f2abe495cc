"""A Mosquitto of `na64daq up`'s own: loopback only, generated accounts, files under run_dir/mqtt.

`LocalBroker(run_dir=...)` writes into `run_dir/mqtt/` (mode 700): `mosquitto.conf`
(deploy/mosquitto/mosquitto.conf with the listener, paths and `user` rewritten), `passwd`,
`acl` (generated from roles.toml), one `<user>.env` per account (the KEY=VALUE lines
`MqttSettings.from_file` reads; mode 600) and, while the broker runs, `broker.json`
({"url", "pid", "port"}). Passwords are new at every start. `local_credentials` is how a
command finds an account's file.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from daq.control.broker import (
    DEPLOY_DIR,
    BrokerError,
    Roles,
    create_password_file,
    load_roles,
    plain_listener_only,
    render_acl,
)
from daq.errors import ConfigError, ServiceError
from daq.mqtt import ENV_PASSWORD, ENV_URL, ENV_USER

SERVICE_ROLE = "service"
SERVICE_ROLES = (SERVICE_ROLE, "runcontrol")  # accounts of processes, not of people
SEARCH_DIRS = ("/usr/sbin", "/usr/bin")  # Debian installs mosquitto in /usr/sbin
STATE_FILE = "broker.json"
_PORT_ATTEMPTS = 3  # port 0: another process may take the chosen port before mosquitto


class LocalBrokerError(BrokerError):
    """The local broker cannot start, or none runs where one was expected.

    `run_dir`, and where known the `binary`, the `port` and mosquitto's `stderr` (with the
    end of its log file) are attributes.
    """

    def __init__(self, message: str, *, run_dir: Path, binary: str | None = None,
                 port: int | None = None, stderr: str = "") -> None:
        super().__init__(message + (f"\n{stderr}" if stderr else ""))
        self.run_dir = run_dir
        self.binary = binary
        self.port = port
        self.stderr = stderr


def mqtt_dir(run_dir: Path) -> Path:
    """Where the broker of `run_dir` keeps its files."""
    return Path(run_dir) / "mqtt"


def find_mosquitto(binary: str | Path | None = None) -> str:
    """The mosquitto executable: `binary`, else PATH, /usr/sbin, /usr/bin."""
    found = (str(binary) if binary is not None else shutil.which("mosquitto")) or next(
        (p for p in (f"{d}/mosquitto" for d in SEARCH_DIRS) if os.access(p, os.X_OK)), None)
    if found is None or not os.access(found, os.X_OK):
        where = binary if binary is not None else f"PATH, {', '.join(SEARCH_DIRS)}"
        raise BrokerError(f"mosquitto is not installed (looked for it in {where}); "
                          "install it: apt-get install mosquitto")
    return found


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a running mosquitto (a zombie or a reused PID is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive, and not ours to judge further
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust kill(0)
    return b"mosquitto" in cmdline


def running_state(run_dir: Path) -> dict[str, Any] | None:
    """broker.json of `run_dir` when its broker still runs, else None."""
    try:
        state = json.loads((mqtt_dir(run_dir) / STATE_FILE).read_text())
        pid = int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state if pid > 0 and pid_alive(pid) else None


def local_credentials(run_dir: Path, user: str) -> Path | None:
    """`run_dir/mqtt/<user>.env` when the broker of `run_dir` runs and has that account."""
    path = mqtt_dir(run_dir) / f"{user}.env"
    return path if running_state(run_dir) is not None and path.is_file() else None


def require_credentials(run_dir: Path, user: str, *, config: Path | None = None) -> Path:
    """`local_credentials`, or a LocalBrokerError saying why there are none (`config`: the
    topology file, named in the hint to start `na64daq up`)."""
    path = local_credentials(run_dir, user)
    if path is not None:
        return path
    d = mqtt_dir(run_dir)
    if running_state(run_dir) is None:
        up = f"na64daq up --config {config}" if config is not None else "na64daq up"
        raise LocalBrokerError(f"no broker of `na64daq up` found under {d} (is `{up}` "
                               "running?)", run_dir=Path(run_dir))
    accounts = ", ".join(sorted(f.stem for f in d.glob("*.env")))
    raise LocalBrokerError(f"the broker of `na64daq up` under {d} has no account {user!r} "
                           f"(accounts: {accounts})", run_dir=Path(run_dir))


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 600, atomically (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _accepts(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def render_conf(template: str, *, host: str, port: int, directory: Path, user: str) -> str:
    """The deployed mosquitto.conf with its listener, file paths and `user` rewritten.

    `user`: run as root, mosquitto would drop to the `mosquitto` user, which cannot read a
    private run directory; it stays whoever started it.
    """
    subs = {"listener": f"listener {port} {host}",
            "password_file": f"password_file {directory / 'passwd'}",
            "acl_file": f"acl_file {directory / 'acl'}",
            "persistence_location": f"persistence_location {directory}/",
            "log_dest": f"log_dest file {directory / 'mosquitto.log'}"}
    out, seen = [f"user {user}"], set()
    for line in plain_listener_only(template).splitlines():
        key = line.split(" ", 1)[0]
        if key == "user":
            continue
        if key in subs:
            seen.add(key)
        out.append(subs.get(key, line))
    if missing := sorted(set(subs) - seen):
        raise ConfigError("mosquitto.conf", missing, "a template with a line for each")
    return "\n".join(out) + "\n"


class LocalBroker:
    """A Mosquitto on loopback for one run directory; a context manager (start, stop)."""

    def __init__(self, *, run_dir: Path, host: str = "127.0.0.1", port: int = 0,
                 users: Sequence[str] | None = None,
                 roles_file: Path = DEPLOY_DIR / "roles.toml",
                 conf_template: Path = DEPLOY_DIR / "mosquitto.conf",
                 binary: str | Path | None = None,
                 start_timeout: float = 10.0, stop_timeout: float = 5.0) -> None:
        """`users`: the accounts (default: every user of roles.toml); a name roles.toml does
        not know becomes a `service` account. `binary`: mosquitto's path (default: found in
        PATH, /usr/sbin, /usr/bin)."""
        self.run_dir = Path(run_dir)
        if re.search(r"[\x00-\x1f]", str(self.run_dir)):
            raise ConfigError("run_dir", str(self.run_dir), "a path without control characters")
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigError("host", host, "a loopback address (127.0.0.1)")
        if not 0 <= port <= 65535:
            raise ConfigError("port", port, "between 0 (a free port) and 65535")
        for name, v in (("start_timeout", start_timeout), ("stop_timeout", stop_timeout)):
            if not 0 < v <= 300:
                raise ConfigError(name, v, "between 0 and 300 seconds")
        self.host, self._want_port = host, port
        self.roles = _roles(load_roles(roles_file), users)
        self.users = tuple(sorted(self.roles.users))
        self._template = Path(conf_template)
        self._binary = binary
        self._start_timeout, self._stop_timeout = start_timeout, stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._passwords: dict[str, str] = {}

    @property
    def directory(self) -> Path:
        return mqtt_dir(self.run_dir)

    @property
    def port(self) -> int:
        if self._port is None or self._proc is None:
            raise ServiceError("LocalBroker is not started: no port yet")
        return self._port

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ServiceError("LocalBroker is not started: no pid")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def credentials_file(self, user: str) -> Path:
        """The account's KEY=VALUE file (for `MqttSettings.from_file`, `ctl --credentials`)."""
        if user not in self.roles.users:
            raise ConfigError("user", user, f"an account among {list(self.users)}")
        return self.directory / f"{user}.env"

    def env(self) -> dict[str, str]:
        """For child processes: NA64_MQTT_URL and NA64_MQTT_<USER>_USERNAME/_PASSWORD of
        every service account (how daq.app.mqtt_settings finds a service's own account)."""
        out = {ENV_URL: self.url}
        for user in self.users:
            if self.roles.users[user] in SERVICE_ROLES:
                tag = re.sub(r"[^A-Z0-9]", "_", user.upper())
                out[ENV_USER.replace("NA64_MQTT_", f"NA64_MQTT_{tag}_")] = user
                out[ENV_PASSWORD.replace("NA64_MQTT_", f"NA64_MQTT_{tag}_")] = \
                    self._passwords[user]
        return out

    def start(self) -> LocalBroker:
        """Write the files, start mosquitto and return once its port accepts connections."""
        if self._proc is not None:
            raise ServiceError("LocalBroker is already started")
        binary = find_mosquitto(self._binary)
        if (other := running_state(self.run_dir)) is not None:
            raise LocalBrokerError(
                f"a broker of {self.run_dir} already runs (pid {other.get('pid')}, "
                f"{other.get('url')}); is `na64daq up` running for it?",
                run_dir=self.run_dir, binary=binary)
        self._prepare()
        for attempt in range(_PORT_ATTEMPTS):
            port = self._want_port or _free_port(self.host)
            if not _port_free(self.host, port):
                if self._want_port:
                    raise LocalBrokerError(f"port {self.host}:{port} is in use",
                                           run_dir=self.run_dir, binary=binary, port=port)
                continue
            error = self._launch(binary, port)
            if error is None:
                try:
                    self._publish(port)
                except BaseException:
                    self.stop()
                    raise
                return self
            if self._want_port or attempt == _PORT_ATTEMPTS - 1 or \
                    "in use" not in error.stderr:
                raise error
        raise LocalBrokerError(f"no free port on {self.host} after {_PORT_ATTEMPTS} tries",
                               run_dir=self.run_dir, binary=binary)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after `stop_timeout`; remove broker.json. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _terminate(proc, self._stop_timeout)
        (self.directory / STATE_FILE).unlink(missing_ok=True)

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _prepare(self) -> None:
        """The directory (700), new passwords, the password file and the ACL."""
        d = self.directory
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        d.chmod(0o700)
        for old in d.glob("*.env"):  # accounts of an earlier start
            old.unlink()
        (d / STATE_FILE).unlink(missing_ok=True)
        self._passwords = {u: secrets.token_urlsafe(24) for u in self.users}
        create_password_file(d / "passwd", self._passwords)
        _write_private(d / "acl", render_acl(self.roles))

    def _launch(self, binary: str, port: int) -> LocalBrokerError | None:
        """Start mosquitto on `port`; None once it accepts connections, else the error."""
        d = self.directory
        conf = render_conf(self._template.read_text(), host=self.host, port=port,
                           directory=d, user=pwd.getpwuid(os.geteuid()).pw_name)
        _write_private(d / "mosquitto.conf", conf)
        log_mark = (d / "mosquitto.log").stat().st_size if (d / "mosquitto.log").exists() \
            else 0
        with open(d / "mosquitto.stderr", "wb") as err:
            proc = subprocess.Popen([binary, "-c", str(d / "mosquitto.conf")],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, start_new_session=True)
        deadline = time.monotonic() + self._start_timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if _accepts(self.host, port) and proc.poll() is None:
                self._proc, self._port = proc, port
                return None
            time.sleep(0.02)
        why = "exited" if proc.poll() is not None else f"is not listening after " \
            f"{self._start_timeout} s"
        _terminate(proc, self._stop_timeout)
        log = (d / "mosquitto.log").read_bytes()[log_mark:].decode(errors="replace") \
            if (d / "mosquitto.log").exists() else ""
        detail = "\n".join(x for x in (_tail(d / "mosquitto.stderr"),
                                       "\n".join(log.splitlines()[-10:])) if x)
        return LocalBrokerError(f"{binary} on {self.host}:{port} {why}", run_dir=self.run_dir,
                                binary=binary, port=port, stderr=detail)

    def _publish(self, port: int) -> None:
        """The accounts' credentials files, then broker.json (what `local_credentials` reads)."""
        url = f"mqtt://{self.host}:{port}"
        for user, pw in self._passwords.items():
            _write_private(self.credentials_file(user),
                           "# the broker of `na64daq up` (daq.control.localbroker); valid "
                           f"while it runs\n{ENV_URL}={url}\n{ENV_USER}={user}\n"
                           f"{ENV_PASSWORD}={pw}\n")
        _write_private(self.directory / STATE_FILE,
                       json.dumps({"url": url, "pid": self.pid, "port": port}) + "\n")


def _roles(roles: Roles, users: Sequence[str] | None) -> Roles:
    """`roles` restricted to `users`; names it does not know become service accounts."""
    if users is None:
        return roles
    if not users or len(set(users)) != len(users):
        raise ConfigError("users", list(users), "a non-empty list of distinct names")
    chosen: Mapping[str, str] = {u: roles.users.get(u, SERVICE_ROLE) for u in users}
    if SERVICE_ROLE not in roles.roles:
        raise ConfigError("roles", sorted(roles.roles), f"a role named {SERVICE_ROLE!r}")
    return Roles.parse({"roles": roles.model_dump()["roles"], "users": dict(chosen)}).check()


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
