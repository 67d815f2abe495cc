/* The shift page: polls /api/state, redraws numbers and plots when a spill closed.
   Every number element carries its raw value in data-value (the browser test compares
   them with /metrics); every plot sets data-rendered once drawn. uPlot draws the plots
   (decision 0017); the E_ECAL-E_HCAL plane is uPlot axes with the cells drawn in a hook. */
"use strict";

const POLL_MS = 1000;
const COLORS = { veto: "#8ab4f8", hcal: "#f2a93b", spill: "#56c16a", run: "#8ab4f8" };
let lastKey = null;
const plots = {};

function fmtSci(x) { return x == null ? "-" : (x === 0 ? "0" : x.toExponential(3)); }
function fmtPct(x, d = 2) { return x == null ? "-" : (100 * x).toFixed(d) + " %"; }
function fmtNum(x, d = 0) { return x == null ? "-" : Number(x).toFixed(d); }
function fmtRate(x) {
  if (x == null) return "-";
  if (x >= 1e6) return (x / 1e6).toFixed(2) + " MHz";
  if (x >= 1e3) return (x / 1e3).toFixed(2) + " kHz";
  return x.toFixed(1) + " Hz";
}
function fmtSecs(x) { return x == null ? "-" : x < 120 ? x.toFixed(0) + " s ago"
  : (x / 60).toFixed(0) + " min ago"; }

function setKey(key, value, text, cls) {
  for (const el of document.querySelectorAll(`[data-key="${key}"]`)) {
    el.dataset.value = value == null ? "" : String(value);
    el.textContent = text;
    if (cls !== undefined) {
      el.classList.remove("ok", "warn", "bad", "on", "off", "running", "paused", "idle",
        "error", "configured", "booted");
      if (cls) el.classList.add(...cls.split(" "));
    }
  }
}

function band(value, lo, hi) {  /* alarm band -> css class */
  if (value == null) return "";
  if ((lo != null && value < lo) || (hi != null && value > hi)) return "bad";
  return "ok";
}

function fmtAlarmValue(a) {
  if (a.value == null) return "";
  if (a.name === "no_spill") return `${a.value.toFixed(0)} s since the last spill`;
  return fmtPct(a.value, 2);
}

function table(id, rows) {
  const tb = document.querySelector(`#${id} tbody`);
  tb.replaceChildren(...rows.map(cells => {
    const tr = document.createElement("tr");
    for (const c of cells) {
      const td = document.createElement("td");
      if (typeof c === "object" && c !== null) {
        td.textContent = c.text; td.dataset.value = String(c.value ?? "");
        if (c.key) td.dataset.key = c.key;
      } else td.textContent = c;
      tr.appendChild(td);
    }
    return tr;
  }));
}

function render(s) {
  setKey("run", s.run, s.run ?? "-");
  setKey("run_state", s.run_state, s.run_state, s.run_state);
  setKey("spill", s.spill, s.spill ?? "-");
  setKey("beam_on", s.beam_on ? 1 : 0, s.beam_on ? "ON" : "OFF", s.beam_on ? "on" : "off");
  setKey("since_last_spill_s", s.since_last_spill_s, fmtSecs(s.since_last_spill_s));
  setKey("eot_run", s.eot.run, fmtSci(s.eot.run));
  setKey("eot_total", s.eot.total, fmtSci(s.eot.total));
  setKey("eot_spill", s.eot.last_spill, fmtSci(s.eot.last_spill));
  setKey("live_time", s.live_time, fmtPct(s.live_time, 1),
         s.live_time == null ? "" : s.live_time < 0.8 ? "bad" : s.live_time < 0.95 ? "warn" : "ok");
  setKey("dead_time", s.dead_time, fmtPct(s.dead_time, 1));
  const alarm = Object.fromEntries(s.alarms.map(a => [a.name, a]));
  setKey("pileup", s.pileup, fmtPct(s.pileup), alarm.pileup_high.raised ? "bad" : "ok");
  setKey("pileup_run", s.pileup_run, fmtPct(s.pileup_run));
  for (const det of ["veto", "hcal"]) {
    const e = s.efficiency[det];
    const raised = alarm[`${det}_efficiency_low`].raised;
    setKey(det, e ? e.value : null, e && e.value != null ? e.value.toFixed(4) : "-",
           raised ? "bad" : (e && e.value != null ? "ok" : ""));
    setKey(`${det}_interval`, e ? e.n : null, e && e.value != null
      ? `[${e.low.toFixed(4)}, ${e.high.toFixed(4)}] n=${e.n}` : "no electron sample");
  }
  table("rates", Object.entries(s.rates_hz).map(([t, r]) =>
    [t, { text: fmtRate(r), value: r, key: `rate_${t}` },
     { text: `${s.triggers[t] ?? 0} events`, value: s.triggers[t] ?? 0, key: `trig_${t}` }]));
  table("composition", ["electron", "hadron", "muon", "other"].map(sp =>
    [sp, { text: fmtPct(s.composition[sp]), value: s.composition[sp], key: `comp_${sp}` },
     { text: fmtPct(s.composition_run[sp]), value: s.composition_run[sp] }]).concat([
    ["events counted",
     { text: fmtNum(s.composition_events), value: s.composition_events, key: "comp_events" },
     { text: fmtNum(s.composition_events_run), value: s.composition_events_run }]]));
  document.getElementById("iso-before").textContent = s.isolation_ns[0];
  document.getElementById("iso-after").textContent = s.isolation_ns[1];
  const cal = s.calibration, band = cal.band;
  const scaleText = e => e ? `${e.value.toFixed(4)} ± ${e.error.toFixed(4)}` : "-";
  setKey("ecal_scale", cal.scale ? cal.scale.value : null, scaleText(cal.scale),
         alarm.ecal_scale_drift && alarm.ecal_scale_drift.raised ? "bad" : cal.scale ? "ok" : "");
  setKey("ecal_scale_run", cal.scale_run ? cal.scale_run.value : null, scaleText(cal.scale_run));
  // blind: the count is withheld (analyze --unblind, or the monitor's blind = false)
  setKey("signal_box", s.signal_box, s.blind ? "blind" : String(s.signal_box ?? "-"));
  setKey("sideband_c", s.sideband_c, String(s.sideband_c ?? "-"));
  setKey("dimuons", s.dimuons, String(s.dimuons ?? "-"));
  setKey("dimuons_per_eot", s.dimuons_per_eot, fmtSci(s.dimuons_per_eot));
  table("boards", s.boards.map(b => [b.board,
    { text: String(b.incomplete_spill), value: b.incomplete_spill },
    { text: String(b.incomplete_run), value: b.incomplete_run },
    { text: String(b.gaps_run), value: b.gaps_run }]));
  setKey("lost_run", s.lost_run, String(s.lost_run), s.lost_run ? "bad" : "ok");
  setKey("shed_run", s.shed_run, String(s.shed_run));
  const ul = document.getElementById("alarms");
  ul.replaceChildren(...s.alarms.map(a => {
    const li = document.createElement("li");
    li.className = a.raised ? "raised" : "quiet";
    li.dataset.alarm = a.name; li.dataset.raised = a.raised ? "1" : "0";
    const v = fmtAlarmValue(a);
    li.textContent = `${a.raised ? "RAISED" : "ok"}  ${a.name}: ${a.what}` + (v ? ` (${v})` : "")
      + (a.times_raised ? `, raised ${a.times_raised}x` : "");
    const rb = document.createElement("span");
    rb.className = "runbook"; rb.textContent = a.runbook;
    li.appendChild(rb);
    return li;
  }));
}

/* --- plots ------------------------------------------------------------------------ */

function width(el) { return Math.max(300, el.clientWidth - 4); }

function verticalLines(xs) {
  return u => {
    const { ctx } = u; ctx.save(); ctx.setLineDash([5, 4]); ctx.strokeStyle = "#bbb";
    for (const x of xs) {
      const px = u.valToPos(x, "x", true);
      ctx.beginPath(); ctx.moveTo(px, u.bbox.top); ctx.lineTo(px, u.bbox.top + u.bbox.height);
      ctx.stroke();
    }
    ctx.restore();
  };
}

function axes(xlabel, ylabel) {
  const a = { stroke: "#ccc", grid: { stroke: "#2c323a" }, ticks: { stroke: "#2c323a" } };
  return [{ ...a, label: xlabel }, { ...a, label: ylabel }];
}

function stepData(h) {  /* histogram -> uPlot x (left edges + last edge), y (null for 0) */
  const e = h.axes[0].edges;
  const y = h.counts.map(c => (c > 0 ? c : null));
  y.push(y[y.length - 1]);
  return [e.slice(), y];
}

function drawEcal(spill, run, thr) {
  const el = document.getElementById("plot-ecal");
  document.getElementById("ecal-thr").textContent = `${thr.trigger_ecal_gev} GeV`;
  const [x, ys] = stepData(spill);
  const [, yr] = stepData(run);
  const data = [x, ys, yr];
  const opts = {
    width: width(el), height: 300, legend: { show: true },
    scales: { x: { time: false }, y: { distr: 3 } }, axes: axes("E_ECAL (GeV)", "events"),
    series: [{ label: "GeV" },
      { label: `spill ${spill.spill ?? "-"}`, stroke: COLORS.spill, width: 1.5,
        paths: uPlot.paths.stepped({ align: 1 }), points: { show: false } },
      { label: `run ${run.run ?? "-"}`, stroke: COLORS.run, width: 1.5,
        paths: uPlot.paths.stepped({ align: 1 }), points: { show: false } }],
    hooks: { draw: [verticalLines([thr.trigger_ecal_gev, thr.beam_gev])] },
  };
  replot("ecal", el, opts, data, spill.entries + run.entries);
}

function drawEff(recent) {
  const el = document.getElementById("plot-eff");
  const x = recent.map(r => r.spill);
  const get = (det, k) => recent.map(r => (r[det] && r[det].value != null ? r[det][k] : null));
  const data = [x, get("veto", "value"), get("veto", "low"), get("veto", "high"),
                get("hcal", "value"), get("hcal", "low"), get("hcal", "high")];
  const thin = (c) => ({ stroke: c, width: 1, dash: [3, 3], points: { show: false } });
  const opts = {
    width: width(el), height: 300,
    scales: { x: { time: false }, y: { range: (u, lo, hi) => [Math.min(0.8, lo ?? 0.8), 1] } },
    axes: axes("spill", "efficiency"),
    series: [{ label: "spill" },
      { label: "VETO", stroke: COLORS.veto, width: 2 }, { label: "low", ...thin(COLORS.veto) },
      { label: "high", ...thin(COLORS.veto) },
      { label: "HCAL", stroke: COLORS.hcal, width: 2 }, { label: "low", ...thin(COLORS.hcal) },
      { label: "high", ...thin(COLORS.hcal) }],
    bands: [{ series: [3, 2], fill: "rgba(138,180,248,0.18)" },
            { series: [6, 5], fill: "rgba(242,169,59,0.18)" }],
  };
  replot("eff", el, opts, data, x.length);
}

function viridis(t) {  /* 0..1 -> a viridis-like colour */
  const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const f = Math.min(0.9999, Math.max(0, t)) * (stops.length - 1);
  const i = Math.floor(f), w = f - i, a = stops[i], b = stops[i + 1];
  return `rgb(${a.map((v, k) => Math.round(v + w * (b[k] - v))).join(",")})`;
}

function drawPlane(id, key, h, regions) {
  const el = document.getElementById(id);
  const ex = h.axes[0].edges, ey = h.axes[1].edges;
  let max = 0;
  for (const row of h.counts) for (const c of row) max = Math.max(max, c);
  const cells = u => {
    const { ctx } = u;
    ctx.save();
    const lmax = Math.log10(max + 1);
    for (let i = 0; i < h.counts.length; i++) {
      const x0 = u.valToPos(ex[i], "x", true), x1 = u.valToPos(ex[i + 1], "x", true);
      for (let j = 0; j < h.counts[i].length; j++) {
        const c = h.counts[i][j];
        if (!c) continue;
        const y0 = u.valToPos(ey[j], "y", true), y1 = u.valToPos(ey[j + 1], "y", true);
        ctx.fillStyle = viridis(Math.log10(c + 1) / lmax);
        ctx.fillRect(x0, y1, Math.max(1, x1 - x0), Math.max(1, y0 - y1));
      }
    }
    for (const [name, r, color] of [["signal box", regions.signal, "#f0524f"],
                                     ["C", regions.C, "#f2a93b"]]) {
      const x0 = u.valToPos(r.ecal_lo, "x", true), x1 = u.valToPos(r.ecal_hi, "x", true);
      const y0 = u.valToPos(r.hcal_lo, "y", true), y1 = u.valToPos(r.hcal_hi, "y", true);
      ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.setLineDash([]);
      ctx.strokeRect(x0, y1, x1 - x0, y0 - y1);
      ctx.fillStyle = color; ctx.font = `${12 * devicePixelRatio}px sans-serif`;
      ctx.fillText(name, x0 + 4, y1 - 4);
    }
    ctx.restore();
  };
  const data = [[ex[0], ex[ex.length - 1]], [null, null]];
  const opts = {
    width: width(el), height: 300, legend: { show: false },
    scales: { x: { time: false, range: [ex[0], ex[ex.length - 1]] },
              y: { distr: 4, asinh: 1, range: [ey[0], ey[ey.length - 1]] } },
    axes: (() => {
      const a = axes("E_ECAL (GeV)", "E_HCAL (GeV, asinh scale)");
      const top = ey[ey.length - 1];
      a[1].splits = () => [0, 1, 2, 5, 10, 20, 50, 100, 200, 500].filter(v => v <= top);
      return a;
    })(),
    series: [{}, { stroke: "transparent" }],
    hooks: { draw: [cells] },
  };
  replot(key, el, opts, data, h.entries);
}

function replot(key, el, opts, data, entries) {
  if (plots[key]) plots[key].destroy();
  el.replaceChildren();
  plots[key] = new uPlot(opts, data, el);
  el.dataset.rendered = String(Date.now());
  el.dataset.entries = String(entries);
}

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}

async function poll() {
  try {
    const s = await getJSON("/api/state");
    document.getElementById("conn").textContent = "live";
    setKey("since_last_spill_s", s.since_last_spill_s, fmtSecs(s.since_last_spill_s));
    const key = `${s.run}/${s.spills_closed}/${s.run_state}/${s.alarms.map(a => a.raised ? 1 : 0).join("")}`;
    if (key !== lastKey) {
      render(s);
      const [es, er, ps, pr] = await Promise.all([
        getJSON("/api/spectra/ecal?scope=spill"), getJSON("/api/spectra/ecal?scope=run"),
        getJSON("/api/spectra/plane?scope=spill"), getJSON("/api/spectra/plane?scope=run")]);
      drawEcal(es, er, s.thresholds);
      drawEff(s.recent);
      drawPlane("plot-plane-spill", "plane-spill", ps, s.regions);
      drawPlane("plot-plane-run", "plane-run", pr, s.regions);
      lastKey = key;
      document.body.dataset.spills = String(s.spills_closed);
      document.body.dataset.run = String(s.run ?? "");
    }
    setKey("beam_on", s.beam_on ? 1 : 0, s.beam_on ? "ON" : "OFF", s.beam_on ? "on" : "off");
  } catch (err) {
    document.getElementById("conn").textContent = `no data (${err.message})`;
  }
  setTimeout(poll, POLL_MS);
}

poll();
