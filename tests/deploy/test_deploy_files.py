"""The generated deploy files: up to date, valid for promtool, consistent with the topology."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from prom_stack import require

from daq.stack import SERVICES, load_stack_config
from monitors.alarms import ALARMS
from monitors.config import AlarmConfig, Band
from monitors.dashboards import compose, grafana, prometheus, rules
from monitors.dashboards.catalog import DASHBOARDS
from monitors.dashboards.files import build, check, render
from monitors.dashboards.yamltext import dump
from monitors.metrics import METRICS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CFG = load_stack_config(DEPLOY / "topology.toml")


def test_checked_in_files_are_what_the_code_generates() -> None:
    assert check(DEPLOY) == [], "run `na64daq dashboards build` and commit the result"


def test_check_sees_a_hand_edit_and_build_repairs_it(tmp_path: Path) -> None:
    build(tmp_path, CFG)
    assert check(tmp_path, CFG) == []
    f = tmp_path / "grafana/dashboards/na64-shift.json"
    f.write_text(f.read_text().replace("NA64 shift overview", "edited"))
    (tmp_path / "prometheus/rules/na64-alerts.yml").unlink()
    assert set(check(tmp_path, CFG)) == {f, tmp_path / "prometheus/rules/na64-alerts.yml"}
    assert len(build(tmp_path, CFG)) == 2
    assert check(tmp_path, CFG) == []


def test_yaml_files_parse_to_the_generated_documents() -> None:
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load((DEPLOY / "compose.yaml").read_text()) == compose.compose(CFG)
    assert yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text()) == \
        prometheus.config(CFG)
    for name, doc in rules.rule_groups().items():
        assert yaml.safe_load((DEPLOY / "prometheus/rules" / name).read_text()) == doc
    odd = {"a": ["x: y", "#z", "", "yes", "1e3", 'q"uote', "{{ $labels.job }}"], "b": [[1], {}]}
    assert yaml.safe_load(dump(odd)) == odd


# --- promtool -------------------------------------------------------------------------


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require("promtool"), *args], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.prometheus
def test_promtool_check_config_and_rules() -> None:
    r = _promtool("check", "config", str(DEPLOY / "prometheus/prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    r = _promtool("check", "rules", *map(str, sorted((DEPLOY / "prometheus/rules").glob("*.yml"))))
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.prometheus
def test_promtool_rule_unit_tests_pass() -> None:
    r = _promtool("test", "rules", str(DEPLOY / "prometheus/na64-alerts.test.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


@pytest.mark.prometheus
def test_promtool_unit_tests_catch_a_wrong_threshold(tmp_path: Path) -> None:
    """The unit tests are not vacuous: rules with a VETO band of 0.5 fail them."""
    wrong = AlarmConfig(veto_efficiency=Band(low=0.5))
    (tmp_path / "rules").mkdir()
    for name, doc in rules.rule_groups(alarm=wrong).items():
        (tmp_path / "rules" / name).write_text(dump(doc))
    (tmp_path / "t.yml").write_text(dump(rules.rule_tests()))
    r = _promtool("test", "rules", str(tmp_path / "t.yml"))
    assert r.returncode != 0
    assert "VetoEfficiencyLow" in r.stdout + r.stderr
    assert "HcalEfficiencyLow" not in r.stdout + r.stderr


def test_every_alert_has_a_firing_and_a_quiet_case_a_summary_and_a_runbook() -> None:
    names = [a.name for a in rules.alerts()]
    assert len(set(names)) == len(names)
    assert set(names) >= {"VetoEfficiencyLow", "HcalEfficiencyLow", "PileupHigh",
                          "HadronFractionHigh", "NoSpill", "IncompleteEventsHigh",
                          "ServiceDown", "StreamLosses", "MessagesRefused"}
    for a in rules.alerts():
        assert any(e.fires for e in a.examples) and any(not e.fires for e in a.examples), a.name
        assert a.summary and len(a.runbook) > 40 and len(a.description) > 40, a.name
        assert all(e.shown for e in a.examples if e.fires), a.name


def test_every_alert_shows_its_value_describes_itself_and_links_its_runbook() -> None:
    """summary renders $value; description; runbook_url is a section of docs/monitors.md
    whose text is the alert's runbook."""
    doc = (ROOT / "docs/monitors.md").read_text()
    headings = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", doc, flags=re.M)}
    deployed = yaml_rules()
    for a in rules.alerts():
        ann = deployed[a.name]["annotations"]
        assert set(ann) == {"summary", "description", "runbook_url"}, a.name
        assert "$value" in ann["summary"], a.name
        path, _, anchor = ann["runbook_url"].partition("#")
        assert path == rules.RUNBOOK_BASE == "docs/monitors.md" and anchor in headings, a.name
        section = doc[doc.index(f"### {a.name}\n"):]
        section = section[:section.find("\n#", 1)]
        assert " ".join(a.runbook.split()) in " ".join(section.split()), a.name
    assert set(rules.by_alarm()) == set(ALARMS), "every MQTT alarm has its alert"


def yaml_rules() -> dict[str, dict]:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((DEPLOY / "prometheus/rules/na64-alerts.yml").read_text())
    return {r["alert"]: r for r in doc["groups"][0]["rules"]}


def test_promtool_tests_cover_every_alert_and_recording_rule() -> None:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((DEPLOY / "prometheus/na64-alerts.test.yml").read_text())
    alerted = {t["alert_rule_test"][0]["alertname"] for t in doc["tests"]
               if "alert_rule_test" in t}
    assert alerted == {a.name for a in rules.alerts()}
    recorded = {t["promql_expr_test"][0]["expr"] for t in doc["tests"]
                if "promql_expr_test" in t}
    assert recorded == {r.record for r in rules.RECORDS}
    for r in rules.RECORDS:
        assert r.series and r.expect, r.record
    assert set(doc["rule_files"]) == {"rules/na64-alerts.yml", "rules/na64-records.yml"}


@pytest.mark.prometheus
def test_promtool_unit_tests_catch_a_wrong_recording_rule(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    for name, doc in rules.rule_groups().items():
        text = dump(doc)
        if name == "na64-records.yml":
            text = text.replace("rate(na64_builder_events_total[1m])",
                                "irate(na64_recorder_events_total[1m])")
        (tmp_path / "rules" / name).write_text(text)
    (tmp_path / "t.yml").write_text(dump(rules.rule_tests()))
    r = _promtool("test", "rules", str(tmp_path / "t.yml"))
    assert r.returncode != 0 and "na64:stage_events:rate1m" in r.stdout + r.stderr


def test_alert_thresholds_follow_the_monitor_alarm_bands() -> None:
    (veto,) = [a for a in rules.alerts(AlarmConfig(veto_efficiency=Band(low=0.8)))
               if a.name == "VetoEfficiencyLow"]
    assert "< 0.8 " in veto.expr
    docs = rules.rule_groups(for_s=3)["na64-alerts.yml"]["groups"][0]["rules"]
    assert {r.get("for") for r in docs} == {"3s", None}
    deployed = rules.rule_groups()["na64-alerts.yml"]["groups"][0]["rules"]
    assert {r["alert"]: r.get("for") for r in deployed}["VetoEfficiencyLow"] == "1m"


# --- dashboards -----------------------------------------------------------------------

_SOURCED = {n for n, (_, labels, _) in METRICS.items() if "source" in labels}


def test_physics_panels_select_the_source_variable() -> None:
    """Every query on a monitor series with a `source` label selects source="$source"."""
    for d in DASHBOARDS:
        for p in d.panels():
            for q in p.queries:
                for m in re.finditer(r"(na64_[a-z0-9_]+?)(_bucket)?\{([^}]*)\}", q.expr):
                    base = m.group(1)
                    if base in _SOURCED:
                        assert 'source="$source"' in m.group(3), (d.uid, p.title, q.expr)
    for a in rules.alerts():
        for m in re.finditer(r"(na64_[a-z0-9_]+)\{([^}]*)\}", a.expr):
            if m.group(1) in _SOURCED:
                assert 'source="live"' in m.group(2), (a.name, a.expr)


def test_dashboard_json_models() -> None:
    uids = [d.uid for d in DASHBOARDS]
    assert len(set(uids)) == len(uids) == 4
    for d in DASHBOARDS:
        j = grafana.dashboard_json(d)
        ids = [p["id"] for p in j["panels"]]
        assert len(set(ids)) == len(ids)
        for p in j["panels"]:
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24
            if p["type"] != "row":
                assert p["datasource"]["uid"] == grafana.DATASOURCE_UID
                assert p["targets"] and all(t["expr"] for t in p["targets"])
        names = [a["name"] for a in j["annotations"]["list"]]
        assert {"Run start", "Run stop", "Runs (run control)"} <= set(names)
        (var,) = j["templating"]["list"]
        assert var["name"] == "source" and var["current"]["value"] == "live"
        assert json.loads((DEPLOY / f"grafana/dashboards/{d.uid}.json").read_text()) == j
    ds = grafana.datasource_provisioning()["datasources"][0]
    assert ds["uid"] == grafana.DATASOURCE_UID and ds["type"] == "prometheus"


def test_every_dashboard_fits_grafanas_published_schema() -> None:
    from grafana_schema import problems

    for d in DASHBOARDS:
        assert problems(grafana.dashboard_json(d)) == [], d.uid


def test_the_schema_check_is_not_vacuous() -> None:
    from grafana_schema import problems

    j = grafana.dashboard_json(DASHBOARDS[0])
    stat_ = next(p for p in j["panels"] if p["type"] == "stat")
    stat_["options"]["colorMode"] = "rainbow"
    stat_["fieldConfig"]["defaults"]["thresholds"]["mode"] = "relative"
    stat_["runbook"] = "x"
    j["graphTooltip"] = 5
    found = "\n".join(problems(j))
    for what in ("rainbow", "relative", "runbook", "graph_tooltip"):
        assert what in found, found


def test_every_unit_is_a_grafana_unit_id() -> None:
    """`hz` is not one (Grafana's is `hertz`): an unknown id shows the raw number, unscaled."""
    from grafana_schema import UNITS

    assert "hertz" in UNITS and "hz" not in UNITS
    for d in DASHBOARDS:
        for p in grafana.dashboard_json(d)["panels"]:
            if p["type"] == "row":
                continue
            assert p["fieldConfig"]["defaults"]["unit"] in UNITS, (d.uid, p["title"])
            if p["type"] == "heatmap":
                assert p["options"]["yAxis"]["unit"] in UNITS, (d.uid, p["title"])


def test_every_stat_has_explicit_thresholds() -> None:
    """Grafana's default (green, red from 80) would turn Run, Spill and EOT red past 80 and
    leave "Firing alerts" green: every stat says its colours; a count that must be zero
    goes red from 1; a figure with no good or bad value stays in the text colour."""
    expect = {"Run": "text", "Spill": "text", "EOT this run": "text", "EOT total": "text",
              "Beam": "text", "Configuration version": "text"}
    for d in DASHBOARDS:
        for p in grafana.dashboard_json(d)["panels"]:
            if p["type"] != "stat":
                continue
            steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
            assert steps[0]["value"] is None, (d.uid, p["title"])
            assert steps != [{"value": None, "color": "green"}, {"value": 80, "color": "red"}]
            assert p["fieldConfig"]["defaults"]["color"] == {"mode": "thresholds"}
            if p["title"] in expect:
                assert steps == [{"value": None, "color": expect[p["title"]]}], p["title"]
            values = [s["value"] for s in steps[1:]]
            assert values == sorted(values), (d.uid, p["title"])
    shift = {p["title"]: p for p in grafana.dashboard_json(DASHBOARDS[0])["panels"]}
    assert shift["Firing alerts"]["fieldConfig"]["defaults"]["thresholds"]["steps"] == [
        {"value": None, "color": "green"}, {"value": 1.0, "color": "red"}]
    beam = shift["Beam"]["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert beam["1"]["text"] == "ON" and beam["0"]["text"] == "OFF"
    assert "na64_beam_on" in shift["Beam"]["targets"][0]["expr"]
    assert "na64_run_eot" in shift["EOT this run"]["targets"][0]["expr"]


def test_required_panels_exist() -> None:
    titles = {d.uid: {p.title for p in d.panels()} for d in DASHBOARDS}
    assert {"Run", "Spill", "Beam", "EOT this run", "EOT total", "EOT per spill",
            "Trigger rates by type", "Zero-threshold efficiencies", "Pileup fraction",
            "Beam composition", "Monitor alarms"} <= titles["na64-shift"]
    assert {"Shadow trigger by type", "Configuration version"} <= titles["na64-trigger"]
    assert {"E_ECAL (GeV)", "E_HCAL (GeV)", "VETO efficiency (68 % interval)"} <= \
        titles["na64-beam"]
    assert {"Events/s through each stage", "Queues", "Processing time p99",
            "Incomplete events by board", "Lost messages (sequence gaps)"} <= titles["na64-daq"]
    kinds = {p.kind for d in DASHBOARDS for p in d.panels()}
    assert "heatmap" in kinds


# --- compose and scrape targets agree with the topology ---------------------------------


def test_every_service_has_a_scrape_target_and_a_compose_service() -> None:
    doc = compose.compose(CFG)
    jobs = {j["job_name"]: j["static_configs"][0]["targets"]
            for j in prometheus.config(CFG)["scrape_configs"]}
    assert set(jobs) == set(SERVICES)
    for service in SERVICES:
        n = CFG.workers if service == "trigger" else 1
        assert jobs[service] == [f"127.0.0.1:{CFG.metrics.port(service, i)}" for i in range(n)]
        for name in compose.service_of_job(service, CFG):
            svc = doc["services"][name]
            assert svc["network_mode"] == "host"
            cmd = svc["command"]
            # every service, run control too, from the one topology (its /metrics port and
            # command-channel endpoint are there): the real run control, not a twin
            assert cmd[:3] == ["na64daq", "serve", service]
            assert cmd[3:5] == ["--config", "/etc/na64/topology.toml"]
    assert {"prometheus", "grafana", "mosquitto"} <= set(doc["services"])


def test_compose_mounts_files_that_exist() -> None:
    for svc in compose.compose(CFG)["services"].values():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("./"):
                assert (DEPLOY / src).exists(), v


def test_scrape_hosts_and_bad_services() -> None:
    t = prometheus.targets(CFG, hosts={"trigger": "trig1", "monitor": "mon"})
    assert t["trigger"] == ["trig1:9110", "trig1:9111"] and t["monitor"] == ["mon:9103"]
    assert t["builder"] == ["127.0.0.1:9101"]
    from daq.errors import ConfigError

    with pytest.raises(ConfigError, match="hosts"):
        prometheus.targets(CFG, hosts={"nope": "x"})
    with pytest.raises(ConfigError, match="fixed port"):
        prometheus.targets(CFG.model_copy(update={"metrics": CFG.metrics.model_copy(
            update={"builder": 0})}))
    assert "prometheus/prometheus.yml" in render(CFG, hosts={"trigger": "trig1"})
