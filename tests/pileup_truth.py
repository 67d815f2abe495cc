"""What pileup must do to the VETO and HCAL zero-threshold decisions, from the simulator's
truth and the analytic pulse shape alone (decision 0003, "Pileup").

Nothing here calls the simulator's physics or readout: the inputs are the truth (every beam
particle is an event: its continuous time `t_ns`, species, process and energies; the
nearest beam-halo particles `halo_dt`), the model's documented MIP signals (decision 0003,
"Detector response"), the calibration's gains, the geometry's reconstruction windows
(`daq.geometry.reco_window`) and the CR-RC^2 shape (`daq.geometry.pulse_shape`).

A particle depositing amplitude A in a channel with its pulse peaking dt after the event's
in-time pulse adds A x F to the channel's amplitude, F the largest value of the unit pulse
at the window's samples (amplitudes under the 30 ADC peak threshold are not corrected; above
it the correction raises them by at most PEAK_GAIN). An event is inefficient when the sum
over channels of amplitude / gain, counting channels from the zero threshold on, reaches the
monitors' zero energy. `classify` says, event by event, which events must be inefficient,
which must be efficient, and which lie in the grey zone the MIP spread and noise make.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from daq.geometry import Calibration, Geometry, pulse_shape, reco_window

#: decision 0003: MIP signals are lognormal with sigma 0.10; 5 sigma either way
MIP_LOW, MIP_HIGH = float(np.exp(-0.5)), float(np.exp(0.5))
#: decision 0003: VETO 10 MeV in both PMTs of the counter crossed; HCAL 2 GeV in a cell
VETO_MIP_GEV, HCAL_MIP_GEV = 0.010, 2.0
MIP_SIGMA = 0.10  # decision 0003: the lognormal spread of MIP signals
#: decision 0003: a hadron shower's lateral shares in a module's 3 x 3 cells: the centre
#: 0.8, the edges 4x the corners (0.04 and 0.01)
HADRON_LATERAL = np.array([0.8] + [0.04] * 4 + [0.01] * 4)
NOISE_MARGIN = 8.0  # ADC: 4 sigma of the 2 ADC noise
PEAK_GAIN = 1.15  # the largest peak / largest-sample correction of a 20 ns pulse at 80 MHz
REACH_NS = 400.0  # beam neighbours further than this leave nothing in a 400 ns trace
N_PHASES = 64  # decision 0003, "Beam phase": the in-time peak (q + 0.5) / 64 sample late

MUST_PASS, GREY, MUST_FAIL = 0, 1, 2


@dataclass(frozen=True)
class Board:
    """The zero-threshold decision of one board (VETO or HCAL) and its MIP line."""

    name: str
    zero_gev: float  # monitors' zero energy on the board's sum
    zero_adc: float  # trigger's per-channel zero threshold
    gain: float  # ADC per GeV (the lines' channels share it in the default calibration)
    mip_adc: float  # a MIP in one channel of a line, ADC
    cells: int  # channels a halo particle's line has
    window: tuple[int, int]
    sample_ns: float
    trigger_sample: int
    tp_ns: float


def board(geom: Geometry, calib: Calibration, name: str, zero_gev: float,
          zero_adc: float) -> Board:
    gain = float(np.max(calib.gain[name]))
    mip, cells = (VETO_MIP_GEV, 2) if name == "VETO" else (HCAL_MIP_GEV, 3)
    det = geom.detector
    b = geom.board(name)
    return Board(name, zero_gev, zero_adc, gain, mip * gain, cells, reco_window(b, det),
                 det.sample_ns, det.trigger_sample, b.pulse_tp_ns)


def phase_of(t_ns: np.ndarray, sample_ns: float) -> np.ndarray:
    """Where the in-time pulse peaks after the trigger sample (decision 0003, "Beam
    phase"): (q + 0.5) / 64 of a sample, q = floor(64 t / sample) mod 64."""
    q = np.floor(np.asarray(t_ns, np.float64) * (N_PHASES / sample_ns)) % N_PHASES
    return (q + 0.5) * (sample_ns / N_PHASES)


def window_factor(b: Board, dt: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """F: the largest value at the window's samples of a unit pulse peaking dt after the
    in-time peak (dt, phase broadcast together)."""
    s = np.arange(*b.window)
    dt, phase = np.broadcast_arrays(np.asarray(dt, np.float64), phase)
    t = (s - b.trigger_sample) * b.sample_ns - phase[..., None] - dt[..., None]
    # (far offsets clipped to where the shape is 0 or below 1e-300: no overflow)
    return pulse_shape(np.clip(t, -b.tp_ns, 1e4 * b.tp_ns), b.tp_ns).max(axis=-1)


def fail_level(b: Board, cells: int, adc: float) -> float:
    """F from which a line of `cells` channels of `adc` each makes the event inefficient
    (no spread, no noise): each channel from the zero threshold on, their sum from the
    zero energy on."""
    return max(b.zero_adc / adc, b.zero_gev * b.gain / (cells * adc))


def classify(b: Board, truth: dict[str, np.ndarray]) -> np.ndarray:
    """MUST_PASS / GREY / MUST_FAIL per event of `truth` (a whole spill: every beam
    particle is an event) for board `b`'s zero-threshold decision."""
    t = truth["t_ns"].astype(np.float64)
    phase = phase_of(t, b.sample_ns)
    sure_fail = np.zeros(len(t), bool)
    most = np.zeros(len(t))  # the most amplitude (ADC) that could reach one channel
    # the nearest halo particles: a line of MIPs each (a further one adds less)
    for side in (0, 1):
        f = window_factor(b, truth["halo_dt"][:, side], phase)
        sure_fail |= _sure_fail(b, b.cells, b.mip_adc * MIP_LOW, f)
        most += b.mip_adc * MIP_HIGH * f
    # the event's own particle (a hadron taken for an electron) and the beam neighbours,
    # from their own truth
    (cells, adc), big = _beam_lines(b, truth)
    f = window_factor(b, np.zeros(len(t)), phase)
    sure_fail |= _sure_fail(b, cells, adc * MIP_LOW, f)
    most += big * f
    for k in range(1, 9):  # 8 neighbours each side: more within 400 ns is beyond 1e8
        for a, c in ((slice(k, None), slice(None, -k)), (slice(None, -k), slice(k, None))):
            dt = t[c] - t[a]
            near = np.abs(dt) < REACH_NS
            f = window_factor(b, np.where(near, dt, np.inf), phase[a])
            sure_fail[a] |= near & _sure_fail(b, cells[c], adc[c] * MIP_LOW, f)
            most[a] += np.where(near, big[c] * f, 0.0)
    out = np.full(len(t), GREY, np.int8)
    out[most * PEAK_GAIN + NOISE_MARGIN < b.zero_adc] = MUST_PASS
    out[sure_fail] = MUST_FAIL
    return out


def _sure_fail(b: Board, cells: np.ndarray | int, adc: np.ndarray | float,
               f: np.ndarray) -> np.ndarray:
    each = np.asarray(adc) * f - NOISE_MARGIN
    return (each >= b.zero_adc) & (cells * each / b.gain >= b.zero_gev)


def _beam_lines(b: Board, truth: dict[str, np.ndarray]) -> tuple[tuple[np.ndarray, np.ndarray],
                                                                  np.ndarray]:
    """Per beam particle: the line of channels it surely lights (count, ADC each; 0 cells:
    none) and the most it can put into one channel (ADC), from its truth energies."""
    if b.name == "VETO":  # charged particles cross the axis counter: MIPs in its two PMTs
        e = truth["e_veto"].astype(np.float64)
        share = e * MIP_LOW / (MIP_LOW + MIP_HIGH)  # the least one of the two PMTs has
        return (np.where(e > 0, 2, 0), share * b.gain / MIP_LOW), e * b.gain
    e = truth["e_hcal"].astype(np.float64)
    lit = (e > 0).sum(axis=1)
    hadron = truth["species"] == 1
    # muons: a MIP in the centre cell of each module crossed; a hadron's shower spreads over
    # 3 x 3 cells per module, the centre taking ~0.8: the least its brightest centre cell
    # surely gets is taken as a third of that module's energy
    low = np.where(hadron, e.max(axis=1) / 3,
                   e.min(axis=1, initial=np.inf, where=e > 0) / MIP_LOW)
    cells = np.where(lit == 0, 0, np.where(hadron, 1, lit))
    return (cells, np.where(lit > 0, low, 0.0) * b.gain), e.sum(axis=1) * b.gain


def weff_ns(b: Board, cells: int, adc: float, span_ns: float = 800.0, step_ns: float = 0.02
            ) -> float:
    """The effective window: the length of offsets dt at which a line of `cells` channels
    of `adc` makes the event inefficient, averaged over the beam phase (numerical
    integration of the analytic pulse shape; no spread, no noise)."""
    level = fail_level(b, cells, adc)
    dt = np.arange(-span_ns / 2, span_ns / 2, step_ns)
    phases = (np.arange(N_PHASES) + 0.5) * (b.sample_ns / N_PHASES)
    return float(np.mean([(window_factor(b, dt, np.full(len(dt), p)) >= level).sum()
                          for p in phases]) * step_ns)


def _fail_level_of(b: Board, adc: np.ndarray) -> np.ndarray:
    """Per row of channel amplitudes `adc` (rows, cells): the least F at which they make
    the event inefficient (each channel from the zero threshold on, their sum from the zero
    energy on), searched on a fine logarithmic grid; 2.0 (never) if none."""
    grid = np.geomspace(1e-4, 1.0, 2000)
    lit = adc[:, :, None] * grid[None, None, :]  # (rows, cells, F)
    total = np.where(lit >= b.zero_adc, lit, 0.0).sum(axis=1) / b.gain
    ok = total >= b.zero_gev
    first = np.argmax(ok, axis=1)
    return np.where(ok.any(axis=1), grid[first], 2.0)


def expected_efficiency(b: Board, truth: dict[str, np.ndarray], rate_hz: float,
                        halo_rate: float, sample: np.ndarray) -> float:
    """The rate-level expectation of the zero-threshold efficiency of `sample` (the
    monitors' electrons): the share of them whose own particle leaves nothing on the board
    (truth), times exp(-r W_eff) summed over the kinds of particles that reach it, each at
    its rate (the halo: halo_rate; beam hadrons and muons: their truth share of the beam),
    W_eff integrated from the pulse shape at its amplitude (a hadron's: its own truth
    energy per HCAL module, 0.8 of it in the module's centre cell, decision 0003)."""
    lam = rate_hz * 1e-9  # per ns
    species, process = truth["species"], truth["process"]
    beam = len(species)
    levels, weff = _weff_table(b)
    halo = _mip_weff(b, b.cells, levels, weff)
    if b.name == "VETO":
        own = truth["e_veto"] > 0
        # every charged beam particle crosses the axis counter: a MIP line as the halo's
        crossing = float(((species != 0) | (process == 2)).sum()) / beam
        rw = lam * (halo_rate + crossing) * halo
    else:
        e = truth["e_hcal"].astype(np.float64)
        own = e.sum(axis=1) > 0
        muons = float((species == 2).sum()) / beam  # a MIP in HCAL1-4's centre cells
        rw = lam * (halo_rate * halo + muons * _mip_weff(b, 4, levels, weff))
        showers = (species == 1) | (process == 2)
        cells = (e[showers][:, :, None] * HADRON_LATERAL).reshape(int(showers.sum()), -1)
        w = np.interp(_fail_level_of(b, cells * b.gain), levels, weff)
        rw += lam * float(w.sum()) / beam
    return float((~own[sample]).mean()) * math.exp(-rw)


def _mip_weff(b: Board, cells: int, levels: np.ndarray, weff: np.ndarray) -> float:
    """W_eff of a line of `cells` MIPs, averaged over their lognormal spread (a fixed
    sample): a cell under the zero threshold drops out of the sum, so the spread shortens
    the window of a line that needs all its cells."""
    adc = b.mip_adc * np.exp(MIP_SIGMA * np.random.default_rng(0).standard_normal((4000, cells)))
    return float(np.interp(_fail_level_of(b, adc), levels, weff).mean())


def _weff_table(b: Board) -> tuple[np.ndarray, np.ndarray]:
    """W_eff (ns) against the fail level F, increasing levels (for np.interp)."""
    levels = np.geomspace(1e-4, 1.0, 200)
    dt = np.arange(-400.0, 400.0, 0.05)
    phases = (np.arange(N_PHASES) + 0.5) * (b.sample_ns / N_PHASES)
    f = np.stack([window_factor(b, dt, np.full(len(dt), p)) for p in phases])  # (phases, dt)
    counts = np.array([(f >= lv).sum() for lv in levels]) / N_PHASES * 0.05
    return levels, counts


def srd_board(geom: Geometry, widen: int = 0) -> Board:
    """The SRD's window as a `Board` (for `window_factor`), `widen` samples more each side."""
    det = geom.detector
    srd = geom.board("SRD")
    w0, w1 = reco_window(srd, det)
    return Board("SRD", 0.0, 0.0, 1.0, 0.0, 3, (w0 - widen, w1 + widen), det.sample_ns,
                 det.trigger_sample, srd.pulse_tp_ns)


def _electron_neighbours(truth: dict[str, np.ndarray], sample_ns: float
                         ) -> Iterator[tuple[slice, np.ndarray, np.ndarray, np.ndarray]]:
    """(events, their neighbour's offset dt (ns, inf beyond REACH_NS), the neighbour's SRD
    energy (GeV, 0 unless an electron), the events' beam phase) for the 8 nearest beam
    particles on each side: more within 400 ns is beyond 1e8 e-/spill."""
    t = truth["t_ns"].astype(np.float64)
    phase = phase_of(t, sample_ns)
    e = np.where(truth["species"] == 0, truth["e_srd"].astype(np.float64), 0.0)
    for k in range(1, 9):
        for a, c in ((slice(k, None), slice(None, -k)), (slice(None, -k), slice(k, None))):
            dt = t[c] - t[a]
            yield a, np.where(np.abs(dt) < REACH_NS, dt, np.inf), e[c], phase[a]


def srd_neighbours(geom: Geometry, truth: dict[str, np.ndarray], min_gev: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per event: (reached, in_time). `reached`: a beam electron's SRD pulse (its truth
    e_srd, which a hadron or muon does not radiate) puts at least `min_gev` into the event's
    SRD window (its largest value at the window's samples). `in_time`: one of those pulses
    can peak in the window: its peak lies from the sample before the window's first to its
    last sample (the sampled maximum of a lone pulse is one of the two samples around its
    peak)."""
    b = srd_board(geom)
    # the window's edges in samples from the trigger sample (the in-time pulse peaks
    # phase / sample_ns after it)
    lo, hi = b.window[0] - 1 - b.trigger_sample, b.window[1] - b.trigger_sample
    n = len(truth["t_ns"])
    reached, in_time = np.zeros(n, bool), np.zeros(n, bool)
    for a, dt, e, phase in _electron_neighbours(truth, b.sample_ns):
        big = e * window_factor(b, dt, phase) >= min_gev
        peak = (phase + dt) / b.sample_ns
        reached[a] |= big
        in_time[a] |= big & (peak >= lo) & (peak < hi)
    return reached, in_time


def srd_reached(geom: Geometry, truth: dict[str, np.ndarray], min_gev: float) -> np.ndarray:
    """Per event: a beam electron's SRD pulse puts at least `min_gev` into the event's SRD
    window (`srd_neighbours`' first)."""
    return srd_neighbours(geom, truth, min_gev)[0]


def srd_alone(geom: Geometry, truth: dict[str, np.ndarray]) -> np.ndarray:
    """Per event: no other beam electron's SRD pulse reaches the SRD window or the sample
    either side of it (which the pulse definition compares the window's samples with)."""
    b = srd_board(geom, widen=1)
    alone = np.ones(len(truth["t_ns"]), bool)
    for a, dt, e, phase in _electron_neighbours(truth, b.sample_ns):
        alone[a] &= ~(e * window_factor(b, dt, phase) > 0.0)
    return alone


#: a pulse's tail this many peaking times after its peak is below 1e-5 of it: 0.02 ADC of
#: the largest ECAL cell of a 100 GeV shower
TAIL_TP = 8.0


def alone_in_windows(geom: Geometry, truth: dict[str, np.ndarray]) -> np.ndarray:
    """Per event of `truth` (a whole spill, time-ordered): no other particle's pulse reaches
    the reconstruction window of a board it deposits on: no beam particle (every board)
    and no halo particle (VETO, HCAL) from TAIL_TP peaking times before a window's first
    sample (and the beam phase's sample) to a peaking time after its last."""
    det = geom.detector

    def reach(names: tuple[str, ...]) -> tuple[float, float]:
        before = after = 0.0
        for name in names:
            b = geom.board(name)
            w0, w1 = reco_window(b, det)
            before = max(before, (det.trigger_sample - w0 + 1) * det.sample_ns
                         + TAIL_TP * b.pulse_tp_ns)
            after = max(after, (w1 - 1 - det.trigger_sample) * det.sample_ns + b.pulse_tp_ns)
        return before, after

    t = truth["t_ns"]
    before, after = reach(tuple(geom.board_names))
    gap = np.diff(t)
    alone = (np.r_[np.inf, gap] >= before) & (np.r_[gap, np.inf] >= after)
    before, after = reach(("VETO", "HCAL"))
    halo = truth["halo_dt"]
    return alone & (halo[:, 0] <= -before) & (halo[:, 1] >= after)


def beam_near_window(geom: Geometry, truth: dict[str, np.ndarray]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per event: a beam neighbour whose pulse peaks within a sample of the BEAM window (a
    pulse or track found in the window needs one), and the distance to the nearest beam
    neighbour (ns)."""
    det = geom.detector
    w0, w1 = reco_window(geom.board("BEAM"), det)
    lo_ns = (w0 - 2 - det.trigger_sample) * det.sample_ns
    hi_ns = (w1 - det.trigger_sample) * det.sample_ns
    t = truth["t_ns"]
    near = np.zeros(len(t), bool)
    nearest = np.full(len(t), np.inf)
    for k in range(1, 6):  # 5 particles each side: more in 90 ns is beyond 1e8 per spill
        for a, b in ((slice(k, None), slice(None, -k)), (slice(None, -k), slice(k, None))):
            dt = t[b] - t[a]
            near[a] |= (dt > lo_ns) & (dt < hi_ns)
            nearest[a] = np.minimum(nearest[a], np.abs(dt))
    return near, nearest
