"""CURVE encryption and authentication of ZeroMQ links between hosts, switched on by config.

The side that binds is the CURVE server (it holds a key pair and a directory of the public
keys it accepts); the side that connects is a client (its own key pair and the server's
public key). A peer without an accepted key never completes the handshake: it can neither
send into nor receive from the socket, and the refusal is counted.

    auth = CurveAuthenticator(ctx, cfg.authorized_dir)   # one per zmq context
    auth.start()
    make_server(pull_socket, cfg)                        # before bind()
    make_client(push_socket, cfg)                        # before connect()

Key files are those of `zmq.auth.create_certificates` (`name.key` public,
`name.key_secret` secret); `generate_keys` writes a pair.

A topology's `[curve]` section (`CurveTopology`) configures every TCP link of an
installation at once: one directory of public keys named by service (`builder.key`,
`trigger-0.key`, ..., `control.key`), the same on every host, and on each host the secret
keys of the services it runs. `CurveLinks.hook(service)` then makes each socket of that
service a server where it binds and a client of the binder's key where it connects. On the
command channel the key is also bound to the name: run control hears a service only from
the key listed under that name (docs/decisions/0018-curve-names.md).

    na64daq curve keys KEYS --config topology.toml    # KEYS/public, KEYS/secret
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from prometheus_client.core import CounterMetricFamily
from pydantic import Field, model_validator
from zmq.auth.asyncio import AsyncioAuthenticator

from daq.config import StrictModel
from daq.errors import ConfigError


class CurveConfig(StrictModel):
    """CURVE settings of one service's TCP links (all unset and disabled by default)."""

    enabled: bool = Field(default=False, description="Encrypt and authenticate TCP links.")
    secret_key: Path | None = Field(
        default=None, description="This host's key pair (a `.key_secret` certificate file).")
    server_public_key: Path | None = Field(
        default=None, description="Public key file of the server this host connects to.")
    authorized_dir: Path | None = Field(
        default=None, description="Directory of `.key` public keys of clients allowed in.")

    @model_validator(mode="after")
    def _need_keys(self) -> CurveConfig:
        if self.enabled and self.secret_key is None:
            raise ValueError("secret_key is required when CURVE is enabled")
        return self


def _load(path: Path | None, field: str, *, secret: bool) -> tuple[bytes, bytes | None]:
    if path is None:
        raise ConfigError(field, None, "a certificate file (CURVE is enabled)")
    try:
        public, sec = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ConfigError(field, str(path), f"a readable ZeroMQ certificate ({e})") from None
    if secret and sec is None:
        raise ConfigError(field, str(path), "a certificate holding a secret key (.key_secret)")
    return public, sec


def generate_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """Create `name.key` (public, to share) and `name.key_secret` (mode 600) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(directory, name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def make_server(sock: zmq.Socket, cfg: CurveConfig) -> None:
    """Make `sock` (before bind) a CURVE server with this host's key pair. No-op if disabled."""
    if not cfg.enabled:
        return
    public, secret = _load(cfg.secret_key, "secret_key", secret=True)
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_server = True


def make_client(sock: zmq.Socket, cfg: CurveConfig) -> None:
    """Make `sock` (before connect) a CURVE client of the configured server. No-op if disabled."""
    if not cfg.enabled:
        return
    public, secret = _load(cfg.secret_key, "secret_key", secret=True)
    server, _ = _load(cfg.server_public_key, "server_public_key", secret=False)
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_serverkey = server


class CurveAuthenticator:
    """ZAP handler of one zmq context: admits listed client keys, counts every refusal.

    ZeroMQ allows one ZAP handler per context, so all CURVE servers of a process share
    the allowed keys. `reload()` rereads the directory (e.g. on SIGHUP) without a restart.
    """

    def __init__(self, context: zmq.Context, authorized_dir: Path | None) -> None:
        if authorized_dir is None or not Path(authorized_dir).is_dir():
            raise ConfigError("authorized_dir", str(authorized_dir),
                              "a directory of allowed client public keys")
        self.authorized_dir = Path(authorized_dir)
        self._auth = AsyncioAuthenticator(context)
        self._lock = threading.Lock()
        self._keys: set[bytes] = set()
        self.refused = 0
        self.accepted = 0
        self.reload()

    def reload(self) -> int:
        """Reread the allowed keys; returns how many there are."""
        keys = set(zmq.auth.load_certificates(self.authorized_dir))
        with self._lock:
            self._keys = keys
        return len(keys)

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq credentials-provider protocol: `key` is the client's z85 public key."""
        with self._lock:
            ok = key in self._keys
            if ok:
                self.accepted += 1
            else:
                self.refused += 1
        return ok

    def start(self) -> None:
        """Bind the ZAP handler (needs a running event loop: it is an asyncio task)."""
        self._auth.start()
        self._auth.configure_curve_callback(domain="*", credentials_provider=self)

    async def aclose(self) -> None:
        """Stop handling ZAP requests and let the handler task finish."""
        task = getattr(self._auth, "_AsyncioAuthenticator__task", None)  # pyzmq's own
        self._auth.stop()
        if task is not None:  # cancelled: wait until it has ended, leave no task behind
            await asyncio.gather(task, return_exceptions=True)


# --- one topology, every link ------------------------------------------------------------

#: this host's secret-key directory, when it is not the topology's `secret_keys`
SECRET_ENV = "NA64_CURVE_SECRET_KEYS"

#: called with a socket and its endpoint before bind() or connect()
SocketHook = Callable[[zmq.Socket, str], None]


class CurveTopology(StrictModel):
    """The `[curve]` section of a topology: CURVE on every TCP link of the installation."""

    enabled: bool = Field(default=False, description="Encrypt and authenticate TCP links.")
    public_keys: Path | None = Field(
        default=None, description="Directory of every service's public key, "
        "`<service>.key` (builder, recorder, monitor, control, frontend, trigger-<i>); the "
        "same on every host.")
    secret_keys: Path | None = Field(
        default=None, description=f"Directory of this host's `<service>.key_secret` files "
        f"(default: public_keys; {SECRET_ENV} in the environment wins).")
    authorized_dir: Path | None = Field(
        default=None, description="Public keys a server lets in (default: public_keys, "
        "every service of the installation).")

    @model_validator(mode="after")
    def _need_keys(self) -> CurveTopology:
        if self.enabled and self.public_keys is None:
            raise ValueError("public_keys is required when CURVE is enabled")
        return self

    def relative_to(self, base: Path) -> CurveTopology:
        """Its directories read relative to `base` (the topology file's directory)."""
        update = {k: base / v for k in ("public_keys", "secret_keys", "authorized_dir")
                  if (v := getattr(self, k)) is not None and not v.is_absolute()}
        return self.model_copy(update=update)


class CurveLinks:
    """The CURVE side of the links of one process, from the topology's `[curve]`.

    `binders` maps each endpoint to the service that binds it (daq.stack.Endpoints.binders).
    """

    def __init__(self, topo: CurveTopology, binders: Mapping[str, str], *,
                 env: Mapping[str, str] | None = None) -> None:
        if not topo.enabled or topo.public_keys is None:
            raise ConfigError("curve.enabled", topo.enabled, "true to secure links")
        self.public_keys = topo.public_keys
        env = os.environ if env is None else env
        self.secret_keys = Path(env[SECRET_ENV]) if env.get(SECRET_ENV) else (
            topo.secret_keys or topo.public_keys)
        self.authorized_dir = topo.authorized_dir or topo.public_keys
        self.binders = dict(binders)

    def config(self, name: str, server: str | None = None) -> CurveConfig:
        """Service `name`'s CurveConfig: a server, or a client of the service `server`."""
        return CurveConfig(
            enabled=True, secret_key=self.secret_keys / f"{name}.key_secret",
            server_public_key=None if server is None else self.public_keys / f"{server}.key",
            authorized_dir=self.authorized_dir if server is None else None)

    def hook(self, name: str) -> SocketHook:
        """Secures every TCP socket of service `name` before it binds or connects. A
        missing key (its own secret one, a server's public one) is a ConfigError now, when
        the service is built, not when a socket first connects."""
        _load(self.secret_keys / f"{name}.key_secret", "secret key", secret=True)
        self.public_keys_of(set(self.binders.values()))

        def secure(sock: zmq.Socket, endpoint: str) -> None:
            if not endpoint.startswith("tcp://"):
                return  # in one process nothing crosses a wire
            server = self.binders.get(endpoint)
            if server is None:
                raise ConfigError("endpoint", endpoint, "an endpoint of the topology")
            if server == name:
                make_server(sock, self.config(name))
            else:
                make_client(sock, self.config(name, server))
        return secure

    def public_keys_of(self, names: Iterable[str]) -> dict[str, bytes]:
        """Each name's z85 public key, as ZAP reports it (User-Id) on the command channel."""
        return {n: _load(self.public_keys / f"{n}.key", f"public key of {n}", secret=False)[0]
                for n in names}


def generate_installation(directory: Path, names: Iterable[str]) -> list[str]:
    """Key pairs of `names`: `directory/public/<name>.key` (every host gets this
    directory) and `directory/secret/<name>.key_secret` (mode 600, only to the host that
    runs the service). An existing pair is kept, never overwritten. Returns the new names."""
    public, secret = directory / "public", directory / "secret"
    public.mkdir(parents=True, exist_ok=True)
    secret.mkdir(parents=True, exist_ok=True)
    os.chmod(secret, 0o700)
    made = []
    for name in names:
        if (secret / f"{name}.key_secret").exists():
            continue
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            pub, sec = generate_keys(Path(tmp), name)
            shutil.move(sec, secret / sec.name)
            shutil.move(pub, public / pub.name)
        made.append(name)
    return made


class CurveCollector:
    """Exports an authenticator's handshake counts at scrape time (na64_curve_*_total)."""

    def __init__(self, auth: CurveAuthenticator) -> None:
        self.auth = auth

    def collect(self) -> Any:
        yield CounterMetricFamily("na64_curve_refused", "Peers refused by CURVE (public "
                                  "key not authorized)", value=self.auth.refused)
        yield CounterMetricFamily("na64_curve_accepted", "Peers admitted by CURVE",
                                  value=self.auth.accepted)
