"""deploy/README.md and docs/control.md name the paths the shipped mosquitto.conf uses."""

from __future__ import annotations

import re
from pathlib import Path

from daq.control.broker import DEPLOY_DIR

ROOT = DEPLOY_DIR.parents[1]
KEYS = ("password_file", "acl_file", "certfile", "keyfile")


def _conf_paths() -> dict[str, str]:
    text = (DEPLOY_DIR / "mosquitto.conf").read_text()
    return {k: m.group(1) for k in KEYS if (m := re.search(rf"^{k} (\S+)$", text, re.M))}


def test_conf_has_a_loopback_plain_and_a_tls_listener() -> None:
    text = (DEPLOY_DIR / "mosquitto.conf").read_text()
    assert re.findall(r"^listener (.+)$", text, re.M) == ["1883 127.0.0.1", "8883 0.0.0.0"]
    assert set(_conf_paths()) == set(KEYS)


def test_docs_name_the_conf_paths() -> None:
    paths = _conf_paths()
    directory = {str(Path(p).parent) for p in paths.values()}
    assert directory == {"/etc/mosquitto/na64"}
    for doc in (ROOT / "deploy" / "README.md", ROOT / "docs" / "control.md"):
        text = doc.read_text()
        assert "na64daq broker init /etc/mosquitto/na64" in text, doc
        assert "python -m daq.control.broker passwd /etc/mosquitto/na64/passwd" in text, doc
        for p in paths.values():
            assert Path(p).name in text, (doc, p)
