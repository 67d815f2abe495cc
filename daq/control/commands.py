"""`na64daq ctl` subcommands: run control and trigger configuration (parsing and printing only).

The broker and credentials come from NA64_MQTT_URL, NA64_MQTT_USERNAME, NA64_MQTT_PASSWORD
or from `--credentials FILE` (same keys, mode 600); there is deliberately no password option.
With `--config TOPOLOGY`: the broker `na64daq up` started for that topology (its files in
RUN_DIR/mqtt; account `--as USER`, default expert for `trigger set`, shift otherwise), or,
when the topology names one (`mqtt = URL`), that broker with credentials from the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from daq.control.client import ControlClient
from daq.control.localbroker import require_credentials
from daq.errors import ConfigError
from daq.mqtt import ENV_URL, MqttSettings
from daq.stack import load_stack_config

RUN_VERBS = ("start", "stop", "pause", "resume", "configure", "reset")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this package's subcommands to the na64daq parser."""
    p = sub.add_parser("ctl", help="run control and trigger configuration over MQTT",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--credentials", type=Path, metavar="FILE",
                       help="file of NA64_MQTT_URL/USERNAME/PASSWORD lines (mode 600)")
    where.add_argument("--config", type=Path, metavar="FILE",
                       help="topology TOML of `na64daq up`: its broker (and, when up started "
                       "it, its credentials)")
    p.add_argument("--as", dest="as_user", metavar="USER",
                   help="with --config: the account of up's broker (default: expert for "
                   "`trigger set`, shift otherwise)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a reply")
    p.add_argument("--json", action="store_true", help="print replies as JSON")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    verbs.add_parser("status", help="run state and service status").set_defaults(func=_status)
    for verb in RUN_VERBS:
        v = verbs.add_parser(verb, help=f"{verb} the run")
        if verb in ("start", "configure"):
            v.add_argument("--run-type", choices=("physics", "calibration", "test"))
            v.add_argument("--comment")
            v.add_argument("--spills", type=int, metavar="N", dest="max_spills",
                           help="end the run by itself after N spills (default: until stop)")
        if verb == "stop":
            v.add_argument("--reason")
        v.set_defaults(func=_run)
    t = verbs.add_parser("trigger", help="show, change or audit the trigger configuration")
    tv = t.add_subparsers(dest="action", metavar="ACTION", required=True)
    tv.add_parser("show", help="active and pending configuration").set_defaults(func=_show)
    s = tv.add_parser("set", help="change fields (experts only), applied at the next spill")
    s.add_argument("overrides", nargs="+", metavar="KEY=VALUE")
    s.add_argument("--comment", default="", help="why, for the audit log")
    s.set_defaults(func=_set)
    tv.add_parser("history", help="the audit log").set_defaults(func=_history)
    b = sub.add_parser("broker", help="set up the control-plane Mosquitto (TLS, accounts)")
    bv = b.add_subparsers(dest="action", metavar="ACTION", required=True)
    i = bv.add_parser("init", help="write mosquitto.conf, acl, passwd, CA and server "
                      "certificate, and one credentials file per account into DIR")
    i.add_argument("dir", type=Path, metavar="DIR")
    i.add_argument("--host", action="append", dest="hosts", metavar="NAME",
                   help="the broker's host name or address as clients write it (repeat; "
                   "the first goes into the accounts' URL); default: this host's name, "
                   "localhost, 127.0.0.1")
    i.add_argument("--port", type=int, default=8883, help="TLS listener port (default 8883)")
    i.add_argument("--local-port", type=int, default=1883,
                   help="plain listener on 127.0.0.1 (default 1883)")
    i.add_argument("--owner", metavar="USER", help="run as root: give passwd, server.key and "
                   "the data and log directories to USER (the one mosquitto runs as)")
    i.set_defaults(func=_broker_init)


def _broker_init(args: argparse.Namespace) -> int:
    import socket

    from daq.control.brokerinit import init_broker
    from daq.errors import DaqError

    hosts = args.hosts or [socket.getfqdn(), "localhost", "127.0.0.1"]
    try:
        setup = init_broker(args.dir, hosts=hosts, port=args.port,
                            local_port=args.local_port, owner=args.owner)
    except (DaqError, OSError, LookupError) as e:
        print(f"na64daq broker init: error: {e}", file=sys.stderr)
        return 2
    d = setup.directory
    print(f"broker set-up in {d}: mosquitto -c {d / 'mosquitto.conf'}")
    print(f"clients: {setup.url} verified against {setup.ca}")
    print("accounts (credentials files, mode 600; hand each to its user or service):")
    for user, path in setup.accounts.items():
        print(f"  {user:<12} {path}")
    if args.owner is None:
        print("mosquitto reads passwd and server.key after dropping to its user: run as root "
              f"with --owner mosquitto, or chown mosquitto: {d / 'passwd'} {d / 'server.key'} "
              f"{d / 'data'} {d / 'log'}")
    return 0


def _settings(args: argparse.Namespace) -> MqttSettings:
    if args.as_user and not args.config:
        raise ConfigError("--as", args.as_user, "used with --config (the broker of na64daq up)")
    if args.config:
        s = _topology_settings(args)
    elif args.credentials:
        s = MqttSettings.from_file(args.credentials)
    else:
        s = MqttSettings.from_env()
    return s.model_copy(update={"timeout": args.timeout})


def _topology_settings(args: argparse.Namespace) -> MqttSettings:
    cfg = load_stack_config(args.config)
    if cfg.mqtt is not None:
        if args.as_user:
            raise ConfigError("--as", args.as_user, f"no option with mqtt = {cfg.mqtt!r} in "
                              f"{args.config}: credentials come from NA64_MQTT_USERNAME/PASSWORD")
        return MqttSettings.from_mapping({**os.environ, ENV_URL: cfg.mqtt},
                                         source="the environment")
    user = args.as_user or ("expert" if (args.verb, getattr(args, "action", None))
                            == ("trigger", "set") else "shift")
    return MqttSettings.from_file(require_credentials(Path(cfg.run_dir), user,
                                                      config=args.config))


def _with_client(args: argparse.Namespace, fn: Any) -> Any:
    async def go() -> Any:
        async with ControlClient(_settings(args)) as ctl:
            return await fn(ctl)
    return asyncio.run(go())


def _print_reply(args: argparse.Namespace, reply: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps(reply, indent=1, sort_keys=True))
    elif reply.get("ok"):
        extra = {k: v for k, v in reply.items() if k not in ("id", "ok")}
        print("ok " + " ".join(f"{k}={v}" for k, v in extra.items()))
    else:
        print(f"refused ({reply.get('error')}): {reply.get('reason')}", file=sys.stderr)
    return 0 if reply.get("ok") else 1


def _run(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("run_type", getattr(args, "run_type", None)),
                                ("comment", getattr(args, "comment", None)),
                                ("max_spills", getattr(args, "max_spills", None)))
              if v is not None}
    reply = _with_client(args, lambda c: c.run(args.verb, params=params or None,
                                                reason=getattr(args, "reason", None)))
    return _print_reply(args, reply)


def _status(args: argparse.Namespace) -> int:
    st = _with_client(args, lambda c: c.status())
    if args.json:
        print(json.dumps(st, indent=1, sort_keys=True))
        return 0
    run = st.get("run") or {}
    cur = run.get("run") or {}
    print(f"state {run.get('state', 'unknown')}  run {cur.get('run', '-')}  last run "
          f"{run.get('last_run', '-')}  allowed: {', '.join(run.get('allowed', []))}")
    if cur.get("stop_reason"):
        print(f"  run {cur.get('run')}: {cur.get('spills')} spills, {cur.get('events')} "
              f"events; {cur['stop_reason']}")
    if run.get("error"):
        print(f"error: {run['error']}")
    for name, s in sorted(st["services"].items()):
        print(f"  {name:<16} {(s or {}).get('status', 'unknown')}  (MQTT)")
    for name, d in sorted((st.get("daq") or {}).items(), key=lambda kv: _order(kv[0])):
        print(f"  {name:<16} {d.get('status', '?'):<8} {d.get('phase', '?'):<11} run "
              f"{d.get('run') if d.get('run') is not None else '-':<6} pid {d.get('pid', '-')}"
              + _detail(d))
    return 0


def _order(name: str) -> int:
    """Data-flow order for the service table."""
    for i, head in enumerate(("frontend", "builder", "trigger", "recorder", "monitor")):
        if name.startswith(head):
            return i
    return 9


def _detail(d: dict[str, Any]) -> str:
    """The one figure each kind of service is best judged by."""
    if "run_events" in d:
        return f"  spill {d.get('spill')}  events sent {d.get('run_events'):,}" \
            + ("  PAUSED" if d.get("paused") else "")
    if "refused" in d:
        refused = sum((d.get("refused") or {}).values())
        return f"  built {d.get('events', 0):,}  refused {refused:,}  cfg {d.get('cfg', '')[:8]}"
    if "ready" in d:
        return "  kernels ready" if d.get("ready") else "  compiling"
    if "recording" in d:
        rec = d.get("recording")
        return f"  writing {rec['file']}" if rec else f"  files closed {d.get('files_closed')}"
    if "open_spills" in d:
        return f"  open spills {d.get('open_spills')}  alarms {d.get('alarms') or 'none'}"
    return ""


def _show(args: argparse.Namespace) -> int:
    t = _with_client(args, lambda c: c.trigger())
    print(json.dumps(t, indent=1, sort_keys=True))
    return 0


def _set(args: argparse.Namespace) -> int:
    reply = _with_client(args, lambda c: c.trigger_set(list(args.overrides),
                                                       comment=args.comment))
    return _print_reply(args, reply)


def _history(args: argparse.Namespace) -> int:
    entries = _with_client(args, lambda c: c.history())
    if args.json:
        print(json.dumps(entries, indent=1, sort_keys=True))
        return 0
    for e in entries:
        what = e.get("reason") if e["event"] == "refused" else \
            f"version {e.get('version')} cfg {e.get('cfg')}"
        spill = f" from run {e.get('run')} spill {e.get('spill')}" \
            if e["event"] == "activated" else ""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.get("when", 0)))
        print(f"{when}Z {e['event']:<9} {e.get('who')}: {what}{spill}")
    return 0
