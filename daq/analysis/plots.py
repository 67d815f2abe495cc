"""`na64daq plot`: the pictures NA64 reads a run by, as PNG files (matplotlib, mplhep).

- `ecal_spectrum.png`: the E_ECAL spectrum on a log scale, 0.5 GeV bins from 80 to
  110 GeV (the physics trigger's threshold and the beam peak), 2 GeV below, 2.5 GeV above;
  a recorded file's accepted events per trigger type, a raw file's events with and
  without the physics bit.
- `ecal_hcal_plane.png`: E_ECAL against E_HCAL (the sum of the four modules; E_HCAL on a
  scale linear to 1 GeV and logarithmic above) with the signal box and sideband C drawn
  (`monitors.identify.regions`) and counted (their cuts: `identify.signal_box`,
  `identify.sideband_c`; docs/monitors.md). Blind (`blind = true`, the default; `analyze
  --unblind` and `plot --unblind` lift it) the box's count is withheld and no event inside
  its rectangle is shown.
- `plots.json`: the numbers drawn (bin edges and counts, the region counts, the spill
  points), for checks and other tools.
- `spill_figures.png`: per spill, the VETO and HCAL zero-threshold efficiencies and the
  pileup fraction with their Wilson intervals, and the electrons on target with the Poisson
  score interval of the count they come from. For a recorded file these are the figures of
  `analyze`: efficiencies and pileup over its unbiased sample, EOT from the beam prescale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daq.analysis.errors import NothingToAnalyze, need
from daq.analysis.events import open_run
from daq.analysis.reanalyze import analyze_file
from daq.analysis.recorded import Sample, poisson_interval
from daq.analysis.source import FileKind
from monitors.config import MonitorConfig
from monitors.identify import regions as rectangles
from monitors.identify import sideband_c, signal_box
from monitors.stats import estimate
from trigger.config import TRIGGER_BITS

PNGS = ("ecal_spectrum.png", "ecal_hcal_plane.png", "spill_figures.png")
#: the numbers the pictures show, written beside them
NUMBERS = "plots.json"


def spectrum_edges(beam_gev: float = 100.0, top_ratio: float = 1.5) -> np.ndarray:
    """E_ECAL bin edges, GeV: 2 GeV to 80 % of the beam, 0.5 GeV to 110 %, 2.5 GeV above."""
    lo, hi, top = (round(x, 6) for x in (0.8 * beam_gev, 1.1 * beam_gev, top_ratio * beam_gev))
    return np.unique(np.concatenate([np.arange(0.0, lo, 2.0), np.arange(lo, hi, 0.5),
                                     np.arange(hi, top + 1e-9, 2.5)]))


def hcal_edges(top_gev: float = 150.0, box_gev: float = 1.0) -> np.ndarray:
    """E_HCAL bin edges: 4 bins inside the box (below `box_gev`), 40 log-spaced above."""
    return np.concatenate([np.linspace(0.0, box_gev, 5)[:-1],
                           np.geomspace(box_gev, top_gev, 41)])


@dataclass
class SpillPoint:
    """One spill's figures with their intervals, (value, low, high); None: not measured."""

    spill: int
    veto: tuple[float, float, float] | None
    hcal: tuple[float, float, float] | None
    pileup: tuple[float, float, float] | None
    eot: tuple[float, float, float] | None


def _est(e: dict[str, Any] | None) -> tuple[float, float, float] | None:
    if not e or e.get("value") is None:
        return None
    return float(e["value"]), float(e["low"]), float(e["high"])


def spill_points(report: dict[str, Any], confidence: float) -> list[SpillPoint]:
    """The per-spill figures of an `analyze_file` report, with intervals."""
    out = []
    for s in report["spills"]:
        mon = s.get("monitor") if report["kind"] == "recorded" else s
        if mon is None:
            continue
        complete = int(mon.get("events", 0)) - int(mon.get("incomplete_events", 0))
        frac = mon.get("pileup_fraction")
        pileup = None
        if frac is not None and complete:
            p = estimate(round(frac * complete), complete, confidence)
            pileup = (float(frac), p.low, p.high)
        if report["kind"] == "recorded":
            e = s.get("eot")
            eot = None if not e else (e["value"], e["low"], e["high"])
        else:  # the monitors' EOT; its count: the beam-condition events among complete ones
            live, value = s.get("live_time_ratio") or 0.0, s.get("eot")
            lo, hi = poisson_interval(value * live if value else 0.0, confidence)
            eot = None if value is None or not live else (value, lo / live, hi / live)
        out.append(SpillPoint(s["spill"], _est(mon.get("veto_efficiency")),
                              _est(mon.get("hcal_efficiency")), pileup, eot))
    return out


def plot_file(path: str | Path, out_dir: str | Path, *,
              monitor_config: MonitorConfig | None = None, sample: Sample = "unbiased",
              trigger_config: Any = None) -> list[Path]:
    """Write the PNGs of the module docstring for a run file; NothingToAnalyze when it
    has no events (the error of `analyze`, which gives the per-spill figures)."""
    mcfg = monitor_config or MonitorConfig()
    report = analyze_file(path, trigger_config, mcfg, sample=sample)
    run = open_run(path, trigger_config=trigger_config)
    cols = run.arrays().columns
    if not len(cols.get("e_ecal", ())):
        raise NothingToAnalyze(str(path), str(run.kind), "it holds no event to plot")
    mpl: Any = need("matplotlib", "plots", "na64daq plot")
    mpl.use("Agg")
    plt: Any = need("matplotlib.pyplot", "plots", "na64daq plot")
    hep: Any = need("mplhep", "plots", "na64daq plot")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = (f"run {run.number}, {run.kind} file" + (" (replay)" if run.replay else "")
             + (", accepted events" if run.kind is FileKind.RECORDED else ", every event"))
    threshold = _threshold(run.trigger_configs(), report)
    points = spill_points(report, mcfg.confidence)
    written = [_numbers(out / NUMBERS, cols, mcfg, points, report, threshold)]
    with plt.style.context(hep.style.ROOT):
        for name, draw in (("ecal_spectrum.png", _spectrum), ("ecal_hcal_plane.png", _plane)):
            fig, ax = plt.subplots(figsize=(9, 7))
            draw(ax, cols, mcfg, run.kind, threshold, hep)
            hep.label.exp_text("NA64-DAQ", "simulation", loc=0, ax=ax)
            leg = ax.get_legend()
            leg.set_title(title, prop={"size": 12})
            leg._legend_box.align = "left"
            written.append(_save(fig, out / name, plt))
        fig = _spill_figures(points, report, title, plt, hep)
        written.append(_save(fig, out / "spill_figures.png", plt))
    return written


def regions(cols: dict[str, np.ndarray], mcfg: MonitorConfig) -> dict[str, np.ndarray]:
    """Event masks of the signal box and sideband C, the monitors' definitions."""
    return {"signal_box": signal_box(cols, mcfg), "sideband_c": sideband_c(cols, mcfg)}


def _numbers(path: Path, cols: dict[str, np.ndarray], mcfg: MonitorConfig,
             points: list[SpillPoint], report: dict[str, Any], threshold: float) -> Path:
    import json

    edges = spectrum_edges(mcfg.beam_energy_gev, mcfg.spectrum_max_ratio)
    counts, _ = np.histogram(cols["e_ecal"], edges)
    reg = {k: (None if mcfg.blind and k == "signal_box" else int(v.sum()))
           for k, v in regions(cols, mcfg).items()}
    doc = {"file": report["file"], "kind": report["kind"], "events": len(cols["e_ecal"]),
           "ecal_spectrum": {"edges": edges.tolist(), "counts": counts.tolist(),
                             "threshold_gev": threshold},
           "plane": {**reg, "signal_ecal_max_gev": mcfg.signal_ecal_max_gev,
                     "signal_hcal_max_gev": mcfg.signal_hcal_max_gev},
           "spills": [vars(p) for p in points],
           "sample": report.get("monitor_sample", "every event")}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _threshold(configs: dict[int, dict[str, Any]], report: dict[str, Any]) -> float:
    given = report.get("trigger_config")
    if isinstance(given, dict):
        return float(given["ecal_max_gev"])
    values = {float(c["ecal_max_gev"]) for c in configs.values() if "ecal_max_gev" in c}
    return min(values) if values else 90.0


def _spectrum(ax: Any, cols: dict[str, np.ndarray], mcfg: MonitorConfig, kind: FileKind,
              threshold: float, hep: Any) -> None:
    edges = spectrum_edges(mcfg.beam_energy_gev, mcfg.spectrum_max_ratio)
    e, bits = cols["e_ecal"], cols.get("bits")
    h, _ = np.histogram(e, edges)
    hep.histplot(h, edges, ax=ax, label=f"all ({len(e):,})", color="black", lw=1.5)
    if bits is not None:
        groups = (TRIGGER_BITS.items() if kind is FileKind.RECORDED
                  else [("physics", TRIGGER_BITS["physics"])])
        for name, bit in groups:
            sel = (bits & bit) != 0
            if sel.any():
                hs, _ = np.histogram(e[sel], edges)
                hep.histplot(hs, edges, ax=ax, label=f"{name} bit ({int(sel.sum()):,})")
    ax.set_yscale("log")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(0.5, None)
    ax.axvline(threshold, color="tab:red", ls="--", lw=1.2,
               label=rf"physics trigger $E_{{ECAL}}$ < {threshold:g} GeV")
    ax.axvline(mcfg.beam_energy_gev, color="grey", ls=":", lw=1.2,
               label=f"beam {mcfg.beam_energy_gev:g} GeV")
    ax.set_xlabel(r"$E_{ECAL}$ [GeV]  (0.5 GeV bins from 80 to 110 GeV)")
    ax.set_ylabel("events / bin")
    ax.legend(loc="upper left", fontsize=11, bbox_to_anchor=(1.01, 1.0), frameon=False)


def _plane(ax: Any, cols: dict[str, np.ndarray], mcfg: MonitorConfig, kind: FileKind,
           threshold: float, hep: Any) -> None:
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    top = mcfg.spectrum_max_ratio * mcfg.beam_energy_gev
    box_e, box_h = mcfg.signal_ecal_max_gev, mcfg.signal_hcal_max_gev
    e = cols["e_ecal"]
    eh = cols["e_hcal"].sum(axis=1) if cols["e_hcal"].ndim == 2 else cols["e_hcal"]
    reg = regions(cols, mcfg)
    in_box, in_c = reg["signal_box"], reg["sideband_c"]
    c = rectangles(mcfg)["C"]
    keep = ~((e < box_e) & (eh < box_h)) if mcfg.blind else np.ones(len(e), bool)
    xb = np.arange(0.0, top + 1e-9, 1.25)
    yb = hcal_edges(top, box_h)
    h2, _, _ = np.histogram2d(np.clip(e[keep], 0, top - 1e-6), np.clip(eh[keep], 0, top - 1e-6),
                              bins=(xb, yb))
    hep.hist2dplot(np.where(h2 > 0, h2, np.nan), xb, yb, ax=ax, norm=LogNorm(vmin=1))
    ax.set_yscale("symlog", linthresh=box_h, linscale=0.6)
    ax.set_ylim(0, top)
    ax.add_patch(Rectangle((0, 0), box_e, box_h, fill=mcfg.blind, hatch="//" if mcfg.blind
                           else None, facecolor="lightgrey", edgecolor="tab:red", lw=2.5,
                           label=(rf"signal box: $E_{{ECAL}}$ < {box_e:g}, $E_{{HCAL}}$ < "
                                  f"{box_h:g} GeV"
                                  + (" (blind)" if mcfg.blind
                                     else f" ({int(in_box.sum()):,} events)"))))
    ax.add_patch(Rectangle((c["ecal_lo"], c["hcal_lo"]), c["ecal_hi"] - c["ecal_lo"],
                           c["hcal_hi"] - c["hcal_lo"], fill=False, edgecolor="tab:orange",
                           lw=2, ls="--", label=rf"sideband C: {c['ecal_lo']:g} $\leq$ "
                           rf"$E_{{ECAL}}$ < {c['ecal_hi']:g}, $E_{{HCAL}}$ < {c['hcal_hi']:g}"
                           f" GeV ({int(in_c.sum()):,} events)"))
    ax.axvline(threshold, color="white", ls=":", lw=1.2)
    ax.set_xlabel(r"$E_{ECAL}$ [GeV]")
    ax.set_ylabel(r"$E_{HCAL}$ [GeV]")
    ax.legend(loc="upper left", fontsize=11, bbox_to_anchor=(0.0, -0.12), frameon=False)


def _spill_figures(points: list[SpillPoint], report: dict[str, Any], title: str, plt: Any,
                   hep: Any) -> Any:
    fig, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    rows = (("veto", "VETO efficiency"), ("hcal", "HCAL efficiency"),
            ("pileup", "pileup fraction"), ("eot", r"EOT [$10^3$]"))
    for ax, (key, label) in zip(axes, rows, strict=True):
        pts = [(p.spill, getattr(p, key)) for p in points if getattr(p, key) is not None]
        if pts:
            x = np.array([s for s, _ in pts], float)
            v = np.array([t for _, t in pts], float)
            scale = 1e-3 if key == "eot" else 1.0
            ax.errorbar(x, v[:, 0] * scale, yerr=[(v[:, 0] - v[:, 1]) * scale,
                                                  (v[:, 2] - v[:, 0]) * scale],
                        fmt="o", capsize=4, color="black")
        ax.set_ylabel(label, fontsize=14)
    sample = report.get("monitor_sample", "").split(":")[0]
    over = f"the {sample} sample" if sample else "every event"
    axes[-1].set_xlabel("spill")
    axes[-1].set_xticks([p.spill for p in points])
    fig.suptitle(f"NA64-DAQ simulation: {title}\nper spill, 68 % intervals (Wilson; EOT: "
                 f"Poisson score); efficiencies and pileup over {over}", fontsize=13)
    fig.tight_layout()
    return fig
