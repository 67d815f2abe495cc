"""Spill-by-spill, slice-by-slice generation of board readout and truth (pure, seeded).

Only the sorted arrival times of a spill (beam and halo) are held whole; particles and
readout are made one slice at a time. Particle block k of a spill comes from its own random
stream (and so does halo block k), so a particle is the same whether it is the triggering
one or a pileup neighbour of the next slice, and any slice can be regenerated alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from daq.geometry import Board, Calibration, Geometry, reco_window
from simulators.calibrate import SumSpec, to_adc
from simulators.config import FaultConfig, SimConfig
from simulators.errors import SimulatorError
from simulators.features import features, loud_bits
from simulators.physics import HALO_BOARDS, Layout, Particles, Process, generate_block, halo_block
from simulators.readout import (
    PulseShape,
    Sampling,
    gates,
    noise_pool,
    rounded_noise,
    shape_table,
    spans,
    trace_reach,
    waveform_hits,
    waveforms,
)

NOISE_POOL = 1 << 20  # noise values, read at a random offset per event
MAX_HIT_CHANNELS = 255  # channels of a zero-suppressed board (nhit, hit_ch: uint8)


@dataclass
class Slice:
    """One slice of one spill: the readout of every board and the truth of its events."""

    spill: int
    index: int
    first: int
    count: int
    ts: np.ndarray  # int64 (count,)
    #: board -> its arrays besides ts: {"wave"}, or "nhit" and the hits (docs/dataflow.md)
    boards: dict[str, dict[str, np.ndarray]]
    truth: dict[str, np.ndarray]


@dataclass
class SpillPlan:
    """The sorted arrival times (float ns since spill start) of one spill and its slicing.

    Times are continuous so that a gate |dt| < window/2 has exactly the window's length;
    `ts` on the wire is their floor in integer ns.
    """

    spill: int
    t: np.ndarray
    slice_events: int
    t0_ns: int
    #: sorted arrival times (float ns) of the spill's beam-halo particles (never events)
    halo_t: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def events(self) -> int:
        return len(self.t)

    @property
    def n_slices(self) -> int:
        return -(-len(self.t) // self.slice_events)


class Simulator:
    """Generates spills of a run; deterministic for a given configuration and seed."""

    def __init__(self, cfg: SimConfig, geom: Geometry, calib: Calibration,
                 faults: FaultConfig | None = None) -> None:
        wide = [b.name for b in geom.boards if len(b.channels) > MAX_HIT_CHANNELS]
        if cfg.suppresses and wide:
            raise SimulatorError(f"board {wide[0]} has more than {MAX_HIT_CHANNELS} channels: "
                                 "zero-suppressed, it cannot send them (nhit, hit_ch uint8)")
        self.cfg, self.geom, self.calib = cfg, geom, calib
        self.faults = faults or FaultConfig.parse({})
        self.layout = Layout.of(geom)
        self.board_names = geom.board_names
        det = geom.detector
        pool_rng = np.random.default_rng([cfg.seed, 0xA015E])
        widest = max(len(b.channels) for b in geom.boards) * det.samples
        self.noise = noise_pool(pool_rng, det.noise, NOISE_POOL + widest)
        self.noise_int = rounded_noise(self.noise) if cfg.mode == "waveform" else None
        self.loud = loud_bits(self.noise, cfg.zs_adc) if cfg.mode == "feature" else None
        # each board's pulse from the geometry (the trigger corrects amplitudes with it)
        self.shapes = {b.name: PulseShape(tp_ns=b.pulse_tp_ns, order=2.0) for b in geom.boards}
        self.tables = {s: shape_table(s) for s in set(self.shapes.values())}
        self.threshold = 5 * det.noise  # FPGA pulse threshold, ADC counts
        self._blocks: dict[tuple[int, int], Particles] = {}
        self._halo: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        sampling = Sampling(det.samples, det.sample_ns, det.trigger_sample)
        #: per board, how far before and after an event a particle's pulse reaches what the
        #: board reads: its whole trace (waveforms), or its reconstruction window and a
        #: sample either side (features: nothing else changes them)
        self.reach = {b.name: trace_reach(b.pulse_tp_ns, sampling, self._read(b))
                      for b in geom.boards}
        self._v1: dict[int, int] = {}
        self._sums: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        hcal = geom.board("HCAL")
        self._drift_ch = self._drift_channel(geom)  # ECAL channel of the per-cell drift
        #: the truth's per-particle energy sums (GeV), taken before the conversion to ADC
        self.sum_spec: SumSpec = {
            "e_ecal": ("ECAL", [None]), "e_ps": ("ECAL", [geom.board("ECAL").indices("PS")]),
            "e_hcal": ("HCAL", [hcal.indices(f"HCAL{m}") for m in range(1, 5)]),
            "e_veto": ("VETO", [None]), "e_srd": ("SRD", [None])}

    def _read(self, board: Board) -> tuple[int, int] | None:
        """The samples of `board` the readout depends on: all (None) for waveforms, the
        reconstruction window and one sample either side for features (_scan, _peak)."""
        if self.cfg.mode == "waveform":
            return None
        w0, w1 = reco_window(board, self.geom.detector)
        return max(0, w0 - 1), min(self.geom.detector.samples, w1 + 1)

    def _drift_channel(self, geom: Geometry) -> int | None:
        name = self.cfg.ecal_drift_cell
        if name is None:
            return None
        names = [c.name for c in geom.board("ECAL").channels]
        if name not in names:
            raise SimulatorError(f"ecal_drift_cell {name!r} is not an ECAL channel "
                                 f"({names[0]} ... {names[-1]})")
        return names.index(name)

    def ecal_gain(self, spill: int) -> dict[str, float]:
        """The truth of the ECAL gains in `spill`: true / calibration gain, for every
        channel (`scale`) and, with a per-cell drift, for that channel."""
        every, cell = self.cfg.ecal_gain_factor(spill)
        out = {"scale": every}
        if self.cfg.ecal_drift_cell is not None:
            out[self.cfg.ecal_drift_cell] = cell
        return out

    def _gains(self, spill: int) -> dict[str, np.ndarray]:
        """The true gains of `spill`: the calibration's, with the ECAL's scale and drift
        (the trigger still divides by the calibration's: a gain change shifts E_ECAL)."""
        every, cell = self.cfg.ecal_gain_factor(spill)
        if every == cell == 1.0:
            return self.calib.gain
        ecal = self.calib.gain["ECAL"] * every
        if self._drift_ch is not None:
            ecal[self._drift_ch] = self.calib.gain["ECAL"][self._drift_ch] * cell
        return {**self.calib.gain, "ECAL": ecal}

    def v1_count(self, plan: SpillPlan) -> int:
        """Events of the spill's generated slices whose particle fired V1 (the V1 scaler)."""
        return self._v1.get(plan.spill, 0)

    # -- spill level -------------------------------------------------------------------
    def plan(self, spill: int) -> SpillPlan:
        """Arrival times: N ~ Poisson(I * generated/length), uniform in [0, generated), sorted;
        the halo: each beam particle brings one with probability `halo_rate`, placed
        uniformly (a Poisson process at halo_rate x the beam rate, independent of the beam;
        from its own stream, so the beam is what it is without it)."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, spill, 0])
        mean = cfg.intensity * self.faults.intensity_factor(spill) * cfg.gen_s / cfg.spill_length_s
        n = int(rng.poisson(mean))
        t = np.sort(rng.uniform(0.0, cfg.gen_s * 1e9, n))
        hrng = np.random.default_rng([cfg.seed, spill, 0, 1])
        halo_t = np.sort(hrng.uniform(0.0, cfg.gen_s * 1e9, hrng.binomial(n, cfg.halo_rate)))
        return SpillPlan(spill, t, cfg.slice_events, round(spill * cfg.spill_period_s * 1e9),
                         halo_t)

    def slices(self, plan: SpillPlan) -> Iterator[Slice]:
        """Every slice of a spill, in order."""
        try:
            for k in range(plan.n_slices):
                yield self.make_slice(plan, k)
        finally:
            self._blocks.clear()
            self._halo.clear()
            self._sums.clear()  # else the last block's sums of every spill stay behind

    def _block(self, plan: SpillPlan, k: int) -> Particles:
        key = (plan.spill, k)
        blk = self._blocks.get(key)
        if blk is None:
            rng = np.random.default_rng([self.cfg.seed, plan.spill, k + 1])
            n = min(plan.events, (k + 1) * plan.slice_events) - k * plan.slice_events
            blk = generate_block(self.cfg, self.layout, rng, n)
            v1 = blk.dep["BEAM"][:, 3] > 0
            sums = to_adc(blk, self._gains(plan.spill), self.sum_spec)  # deposits -> ADC
            self._sums[key] = {**sums, "v1": v1}
            self._blocks[key] = blk
            for old in [b for b in self._blocks if b[0] != plan.spill or b[1] < k - 1]:
                del self._blocks[old]
                self._sums.pop(old, None)
        return blk

    def _particles(self, plan: SpillPlan, a: int, b: int) -> tuple[Particles, int]:
        """Particles [a, b) of a spill, stitched from their blocks; returns them and `a`."""
        s = plan.slice_events
        ks = range(a // s, (b - 1) // s + 1)
        blocks = [self._block(plan, k) for k in ks]
        cut0 = a - ks[0] * s
        cut1 = cut0 + (b - a)
        if len(blocks) == 1:
            p = blocks[0]
            return _cut(p, cut0, cut1), a
        cat = Particles(
            np.concatenate([p.species for p in blocks]),
            np.concatenate([p.process for p in blocks]),
            np.concatenate([p.e_true for p in blocks]),
            np.concatenate([p.p_true for p in blocks]),
            {n: np.concatenate([p.dep[n] for p in blocks]) for n in blocks[0].dep},
            {n: np.concatenate([p.touched[n] for p in blocks]) for n in blocks[0].touched},
            {n: np.bitwise_or.reduce([p.reach[n] for p in blocks]) for n in blocks[0].reach})
        return _cut(cat, cut0, cut1), a

    def _halo_block(self, plan: SpillPlan, k: int) -> dict[str, np.ndarray]:
        """Deposits (ADC) of halo particles [k s, (k + 1) s) of the spill, s = slice_events,
        from their own stream (the same whichever slice reads them)."""
        key = (plan.spill, k)
        blk = self._halo.get(key)
        if blk is None:
            s = plan.slice_events
            n = min(len(plan.halo_t), (k + 1) * s) - k * s
            rng = np.random.default_rng([self.cfg.seed, plan.spill, k + 1, 3])
            gains = self._gains(plan.spill)
            blk = {b: d * gains[b] for b, d in halo_block(self.layout, rng, n).items()}
            self._halo[key] = blk
            for old in [h for h in self._halo if h[0] != plan.spill or h[1] < k - 2]:
                del self._halo[old]
        return blk

    def _halo_rows(self, plan: SpillPlan, board: str, a: int, b: int) -> np.ndarray:
        """Deposits (ADC) on `board` of halo particles [a, b) of the spill (a < b)."""
        s = plan.slice_events
        rows = [self._halo_block(plan, k)[board] for k in range(a // s, (b - 1) // s + 1)]
        cut = a - (a // s) * s
        return np.concatenate(rows)[cut:cut + (b - a)]

    # -- slice level -------------------------------------------------------------------
    def make_slice(self, plan: SpillPlan, k: int) -> Slice:
        """Readout and truth of slice `k` of a spill."""
        det = self.geom.detector
        first = k * plan.slice_events
        count = min(plan.slice_events, plan.events - first)
        ev_global = np.arange(first, first + count, dtype=np.int64)
        ranges = {b.name: self._spans(plan.t, first, count, *self.reach[b.name])
                  for b in self.geom.boards}
        a = int(min(r[0][0] for r in ranges.values()))
        b = int(max(r[1][-1] for r in ranges.values()))
        parts, base = self._particles(plan, a, b)
        t = plan.t[a:b]
        ev = ev_global - base
        rng = np.random.default_rng([self.cfg.seed, plan.spill, k + 1, 2])
        boards: dict[str, dict[str, np.ndarray]] = {}
        pileup = np.empty((count, len(self.board_names)), np.uint8)
        for bi, board in enumerate(self.geom.boards):
            # the truth's pileup: beam neighbours within the reconstruction window
            glo, ghi = gates(t, ev, board.window_ns)
            pileup[:, bi] = np.minimum(ghi - glo - 1, 255)
            lo, hi = ranges[board.name]
            tb, evb, lo, hi = t, ev, lo - base, hi - base
            dep, touched = parts.dep[board.name], parts.touched[board.name]
            reach = parts.reach[board.name]
            if board.name in HALO_BOARDS:
                tb, evb, dep, touched, reach = self._with_halo(plan, board.name, t, ev, dep,
                                                               touched, reach)
                lo, hi = spans(tb, evb, *self.reach[board.name])
            shape = self.shapes[board.name]
            window = reco_window(board, det)
            offsets = rng.integers(0, NOISE_POOL, count)
            if self.cfg.mode == "feature":
                ped = float(np.max(self.calib.pedestal[board.name]))
                boards[board.name] = features(
                    evb, tb, lo, hi, dep, shape, self.noise, offsets,
                    self.threshold, det.adc_max - ped, self.cfg.zs_adc, self.tables[shape],
                    self.loud, (touched, reach),
                    sampling=Sampling(det.samples, det.sample_ns, det.trigger_sample, window))
                continue
            args = (evb, tb, lo, hi, dep, shape, self.calib.pedestal[board.name],
                    self.noise, offsets, det.samples, det.sample_ns, det.trigger_sample,
                    det.adc_max)
            if self.cfg.zero_suppress:
                boards[board.name] = waveform_hits(*args, self.cfg.zs_adc, self.tables[shape],
                                                   self.noise_int, window=window)
            else:
                boards[board.name] = {"wave": waveforms(*args, self.tables[shape],
                                                        self.noise_int)}
        ts = plan.t[first:first + count].astype(np.int64)
        self._block(plan, k)  # slice k is particle block k: its truth sums are ready
        truth = self._truth(self._sums[(plan.spill, k)], parts, ev, ts, pileup)
        truth["t_ns"] = plan.t[first:first + count]
        truth["halo_dt"] = _nearest(plan.halo_t, truth["t_ns"])
        self._v1[plan.spill] = self._v1.get(plan.spill, 0) + int(truth["v1"].sum())
        return Slice(plan.spill, k, first, count, ts, boards, truth)

    def _with_halo(self, plan: SpillPlan, board: str, t: np.ndarray, ev: np.ndarray,
                   dep: np.ndarray, touched: np.ndarray, reach: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The beam particles (times t, deposits dep) merged in time order with the halo
        particles whose pulses reach the traces of events `ev`: times, the events' new
        indices, deposits, `touched` and `reach` (as calibrate.to_adc notes them)."""
        before, after = self.reach[board]
        ha = int(np.searchsorted(plan.halo_t, t[ev[0]] - before, side="right"))
        hb = int(np.searchsorted(plan.halo_t, t[ev[-1]] + after, side="left"))
        if hb <= ha:
            return t, ev, dep, touched, reach
        hdep = self._halo_rows(plan, board, ha, hb)
        times = np.concatenate([t, plan.halo_t[ha:hb]])
        order = np.argsort(times, kind="stable")
        where = np.empty(len(order), np.int64)  # the merged position of each particle
        where[order] = np.arange(len(order))
        return (times[order], where[ev],
                np.concatenate([dep, hdep])[order],
                np.concatenate([touched, (hdep > 0).any(axis=1).astype(np.uint8)])[order],
                reach | (hdep > 0).any(axis=0).astype(np.uint8))

    def _spans(self, t: np.ndarray, first: int, count: int, before: float, after: float
               ) -> tuple[np.ndarray, np.ndarray]:
        """`spans` searched in a margin around the slice, not in the whole spill's times."""
        ev = np.arange(first, first + count, dtype=np.int64)
        margin = 256
        while True:
            w0 = max(0, first - margin)
            w1 = min(len(t), first + count + margin)
            lo, hi = spans(t[w0:w1], ev - w0, before, after)
            if (lo[0] > 0 or w0 == 0) and (hi[-1] < w1 - w0 or w1 == len(t)):
                return lo + w0, hi + w0
            margin *= 4  # a span reached the margin's edge: widen and search again

    def _truth(self, sums: dict[str, np.ndarray], p: Particles, ev: np.ndarray,
               ts: np.ndarray, pileup: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "ts": ts, "species": p.species[ev], "process": p.process[ev],
            "e_true": p.e_true[ev], "p_true": p.p_true[ev], **sums, "pileup": pileup,
            "signal": p.process[ev] == Process.SIGNAL,
        }


def _cut(p: Particles, a: int, b: int) -> Particles:
    return Particles(p.species[a:b], p.process[a:b], p.e_true[a:b], p.p_true[a:b],
                     {n: v[a:b] for n, v in p.dep.items()},
                     {n: v[a:b] for n, v in p.touched.items()}, p.reach)


def _nearest(halo_t: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Truth: (count, 2) float32, the offset (ns) of the nearest halo particle before each
    time of `t` (negative; -inf if none) and after it (+inf if none)."""
    tt = np.concatenate([[-np.inf], halo_t, [np.inf]])
    k = np.searchsorted(halo_t, t, side="left")  # halo_t[k - 1] < t <= halo_t[k]
    out = np.empty((len(t), 2), np.float32)
    out[:, 0] = tt[k] - t
    out[:, 1] = tt[k + 1] - t
    return out
