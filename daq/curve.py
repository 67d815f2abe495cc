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
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import zmq
import zmq.auth
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
