"""`na64daq broker init DIR`: a ready Mosquitto set-up with TLS, accounts and their files.

DIR receives (docs/control.md, "Setting up the broker"):

    mosquitto.conf   deploy/mosquitto/mosquitto.conf with every path under DIR
    acl              generated from roles.toml
    passwd           every account of roles.toml, new random passwords (mode 600)
    ca.crt, ca.key   a CA of this broker's own (ca.key mode 600: keep it off the broker)
    server.crt, server.key   the broker's certificate for `hosts`, signed by the CA
    accounts/<user>.env      NA64_MQTT_URL=mqtts://..., _USERNAME, _PASSWORD, _CA (mode 600)

Certificates come from the `openssl` command (no Python dependency): an EC P-256 CA and
server key, the server certificate naming every host as a subjectAltName.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from daq.control.broker import (
    DEPLOY_DIR,
    BrokerError,
    create_password_file,
    load_roles,
    render_acl,
)
from daq.errors import ConfigError
from daq.mqtt import ENV_CA, ENV_PASSWORD, ENV_URL, ENV_USER

DAYS = 825  # the longest server-certificate life current TLS clients accept


@dataclass(frozen=True)
class BrokerSetup:
    """What `init_broker` wrote: the directory, the URL clients use, account -> its file."""

    directory: Path
    url: str
    accounts: dict[str, Path]
    ca: Path


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(mode)


def _openssl(*args: str) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise BrokerError("openssl is not installed (package openssl)")
    done = subprocess.run([exe, *args], capture_output=True, timeout=60, check=False)
    if done.returncode != 0:
        raise BrokerError(f"openssl {args[0]} failed: {done.stderr.decode().strip()}")


def make_certificates(d: Path, hosts: Sequence[str]) -> None:
    """ca.crt/ca.key and server.crt/server.key in `d` for `hosts` (names or addresses)."""
    san = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"),
             "-days", str(DAYS), "-subj", "/CN=NA64 DAQ broker CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"),
             "-subj", f"/CN={hosts[0]}")
    ext = d / "server.ext"
    ext.write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.crt"),
             "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-out", str(d / "server.crt"),
             "-days", str(DAYS), "-extfile", str(ext))
    for tmp in ("server.csr", "server.ext", "ca.srl"):
        (d / tmp).unlink(missing_ok=True)
    for key in ("ca.key", "server.key"):
        (d / key).chmod(0o600)


def _is_ip(h: str) -> bool:
    try:
        ipaddress.ip_address(h)
    except ValueError:
        return False
    return True


def render_conf(template: str, d: Path, *, port: int, local_port: int, bind: str) -> str:
    """The deployed mosquitto.conf with its two listeners and every path under `d`."""
    subs = {"password_file": f"password_file {d / 'passwd'}",
            "acl_file": f"acl_file {d / 'acl'}",
            "certfile": f"certfile {d / 'server.crt'}",
            "keyfile": f"keyfile {d / 'server.key'}",
            "persistence_location": f"persistence_location {d / 'data'}/",
            "log_dest": f"log_dest file {d / 'log' / 'mosquitto.log'}"}
    out, listeners = [], [f"listener {local_port} 127.0.0.1", f"listener {port} {bind}"]
    for line in template.splitlines():
        key = line.split(" ", 1)[0]
        if key == "listener":
            if not listeners:
                raise ConfigError("mosquitto.conf", line, "two listeners (plain, TLS)")
            line = listeners.pop(0)
        out.append(subs.get(key, line))
    if listeners:
        raise ConfigError("mosquitto.conf", "listener", "two listeners (plain, TLS)")
    return "\n".join(out) + "\n"


def init_broker(d: Path, *, hosts: Sequence[str], port: int = 8883, local_port: int = 1883,
                bind: str = "0.0.0.0", roles_file: Path = DEPLOY_DIR / "roles.toml",
                conf_template: Path = DEPLOY_DIR / "mosquitto.conf",
                owner: str | None = None) -> BrokerSetup:
    """Write a complete broker set-up into `d` (see the module docstring).

    `owner`: the user Mosquitto runs as (`mosquitto`); when given (run as root) passwd,
    server.key and the data/log directories are handed to it so it can read and write
    them after dropping privileges, the rest stays root's.
    """
    if not hosts or not all(re.match(r"^[A-Za-z0-9.:-]{1,253}$", h) for h in hosts):
        raise ConfigError("hosts", list(hosts), "host names or addresses of the broker")
    d = Path(d).resolve()
    d.mkdir(mode=0o755, parents=True, exist_ok=True)
    (d / "accounts").mkdir(mode=0o700, exist_ok=True)
    for sub in ("data", "log"):
        (d / sub).mkdir(mode=0o750, exist_ok=True)
    roles = load_roles(roles_file)
    passwords = {u: secrets.token_urlsafe(24) for u in sorted(roles.users)}
    create_password_file(d / "passwd", passwords)
    _write(d / "acl", render_acl(roles))
    make_certificates(d, hosts)
    _write(d / "mosquitto.conf", render_conf(conf_template.read_text(), d, port=port,
                                             local_port=local_port, bind=bind))
    url = f"mqtts://{hosts[0]}:{port}"
    accounts = {}
    for user, pw in passwords.items():
        path = d / "accounts" / f"{user}.env"
        _write(path, f"# {roles.users[user]} account on the broker of {d}\n{ENV_URL}={url}\n"
               f"{ENV_USER}={user}\n{ENV_PASSWORD}={pw}\n{ENV_CA}={d / 'ca.crt'}\n", 0o600)
        accounts[user] = path
    if owner is not None:
        for p in (d / "passwd", d / "server.key", d / "data", d / "log"):
            shutil.chown(p, user=owner, group=owner)
    return BrokerSetup(d, url, accounts, d / "ca.crt")
