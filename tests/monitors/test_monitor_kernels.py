"""The compiled per-slice aggregation against its NumPy/hist twin: equal to the bit."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import fields

import numpy as np
import pytest
import zmq.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from monitor_synth import features, spill_messages
from prometheus_client import CollectorRegistry

from daq.geometry import BOARD_NAMES
from daq.wire import Kind, Message, decode, encode
from monitors import aggregate as aggregate_module
from monitors import kernels, reference
from monitors.aggregate import RunAnalysis
from monitors.config import MonitorConfig
from monitors.service import MonitorService
from monitors.spectra import SPECTRA, Spectra
from monitors.summary import Counts

CFG = MonitorConfig()
F32 = np.float32
BYTES = ("mult", "sat", "missing", "cond", "bits", "shadow")


def _same_float(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def assert_same(ck: Counts, cr: Counts, sk: Spectra, sr: Spectra) -> None:
    """Every count, every bin (flow bins included) and both energy sums identical."""
    for fl in fields(Counts):
        a, b = getattr(ck, fl.name), getattr(cr, fl.name)
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype, fl.name
            np.testing.assert_array_equal(a, b, err_msg=fl.name)
        else:
            assert a == b, (fl.name, a, b)
            assert type(a) is type(b), fl.name
    for name in SPECTRA:
        np.testing.assert_array_equal(getattr(sk, name).view(flow=True),
                                      getattr(sr, name).view(flow=True), err_msg=name)
    assert _same_float(sk.ecal_sum, sr.ecal_sum), (sk.ecal_sum, sr.ecal_sum)
    assert _same_float(sk.hcal_sum, sr.hcal_sum), (sk.hcal_sum, sr.hcal_sum)


def compare(f: dict[str, np.ndarray], cfg: MonitorConfig = CFG,
            boards: Sequence[str] = BOARD_NAMES, *, into: tuple[Spectra, Spectra] | None = None,
            ) -> tuple[Counts, Spectra]:
    """Aggregate `f` with the kernel and the reference (into fresh or given spectra)."""
    sk, sr = into or (Spectra.empty(cfg), Spectra.empty(cfg))
    # inf and -inf in one sum (or float32 overflow in E_HCAL) warn in NumPy, in both
    with np.errstate(invalid="ignore", over="ignore"):
        ck = kernels.aggregate(f, cfg, boards, sk)
        cr = reference.aggregate(f, cfg, boards, sr)
    assert_same(ck, cr, sk, sr)
    return ck, sk


def _filled(s: Spectra) -> int:
    return int(s.ecal.view(flow=True).sum())


# --- synthetic spills ---------------------------------------------------------------------


@pytest.mark.parametrize(("n", "modules", "incomplete"), [
    (65536, 4, 0.0),  # a full slice: many chunks, every event complete (the usual case)
    (3 * 1024 + 5, 4, 0.05),  # a partial last chunk, not a multiple of 8 either
    (2500, 3, 0.3),  # three modules: the loop that is not unrolled
    (777, 4, 1.0),  # nothing complete
])
def test_synthetic_slices_match(n: int, modules: int, incomplete: float) -> None:
    rng = np.random.default_rng(n)
    f, _ = features(rng, n, hadron=0.05, muon=0.03)
    f["e_hcal"] = np.ascontiguousarray(f["e_hcal"][:, :modules])
    bad = rng.random(n) < incomplete
    f["missing"][bad] = rng.integers(1, 256, int(bad.sum()), dtype=np.uint8)
    f["shadow"] = rng.integers(0, 256, n, dtype=np.uint8)
    f["bits"] = rng.integers(0, 256, n, dtype=np.uint8)
    if modules == 4:  # the trigger's neighbour gaps: ~half the events isolated
        for name in ("dt_prev", "dt_next"):
            f[name] = rng.integers(0, 400, n, dtype=np.uint16)
    c, s = compare(f)
    assert c.incomplete == int(bad.sum()) and _filled(s) == c.complete
    if modules == 4 and incomplete < 1.0:
        assert 0 < c.isolated < c.complete
    if incomplete < 1.0:  # the comparison reached every class it compares
        assert (c.species[:3] > 0).all() and c.electrons > 0 and c.veto_zero > 0
        assert c.pileup > 0
    if incomplete > 0.0:
        assert all(v > 0 for v in c.missing_board.values())


def test_signal_box_and_other_species_match() -> None:
    rng = np.random.default_rng(5)
    f, _ = features(rng, 3000)
    k = np.arange(0, 3000, 7)  # electrons that left little behind: signal-box candidates
    f["e_ecal"][k] = rng.uniform(0, 60, len(k)).astype(F32)
    f["e_hcal"][k] = 0.0
    f["e_veto"][k] = 0.0
    f["e_srd"][1::11] = 5.0  # SRD above the tag: neither electron, muon nor (mostly) hadron
    f["sat"][::3] = rng.integers(0, 256, len(f["sat"][::3]), dtype=np.uint8)  # ECAL's or not
    c, _ = compare(f)
    assert c.signal_box > 0 and c.species[3] > 0
    assert c.saturated_box > 0 and c.saturated_c > 0


def test_slices_add_up_in_the_same_spectra() -> None:
    rng = np.random.default_rng(6)
    pair = (Spectra.empty(CFG), Spectra.empty(CFG))
    total = 0
    for n in (1000, 0, 5000, 13):
        f, _ = features(rng, n)
        f["missing"][::9] = 4
        c, s = compare(f, into=pair)
        total += c.complete
    assert _filled(s) == total > 0


def test_run_analysis_reports_are_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    msgs: list[Message] = []
    rng = np.random.default_rng(7)
    seq: dict[str, int] = {}
    for spill in (1, 2, 3):
        m, _ = spill_messages(rng, spill=spill, slices=3, slice_events=2000, seq0=seq,
                              hadron=0.03, muon=0.02)
        for x in m[:-1]:
            x.arrays["missing"][x.arrays["e_ecal"] < 1.0] = 8  # some incomplete events
        msgs += m

    def run() -> RunAnalysis:
        ra = RunAnalysis(CFG)
        for x in msgs:
            ra.feed(x)
        return ra

    fast = run()
    monkeypatch.setattr(aggregate_module, "aggregate", reference.aggregate)
    slow = run()
    assert fast.report() == slow.report()
    assert fast.totals().incomplete_events > 0
    assert sorted(fast.spectra) == sorted(slow.spectra) == [1, 2, 3]
    for spill in fast.spectra:
        a, b = fast.spectra[spill], slow.spectra[spill]
        assert a.to_dict() == b.to_dict() and a.ecal_sum == b.ecal_sum
        assert a.hcal_sum == b.hcal_sum
    assert fast.run_spectra.to_dict() == slow.run_spectra.to_dict()


# --- spectrum bins: boost-histogram's regular axis, bit for bit ---------------------------

_ODD = [CFG, MonitorConfig(ecal_bins=7, hcal_bins=13, plane_bins=5),
        MonitorConfig(beam_energy_gev=333.3, spectrum_max_ratio=1 / 3, ecal_bins=97,
                      hcal_bins=2000, plane_bins=500),
        MonitorConfig(beam_energy_gev=0.37, spectrum_max_ratio=10, ecal_bins=4, hcal_bins=4,
                      plane_bins=4),
        MonitorConfig(beam_energy_gev=1000, spectrum_max_ratio=0.1, ecal_bins=1999)]


def _edge_values(cfg: MonitorConfig) -> np.ndarray:
    """Every edge of every axis as float32, with its float32 neighbours, and the specials."""
    s = Spectra.empty(cfg)
    edges = np.concatenate([ax.edges for name in SPECTRA for ax in getattr(s, name).axes])
    e = edges.astype(F32)
    vals = [e, np.nextafter(e, F32(np.inf)), np.nextafter(e, F32(-np.inf)),
            np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, np.finfo(F32).max,
                      -np.finfo(F32).max, np.finfo(F32).smallest_subnormal,
                      -np.finfo(F32).smallest_subnormal], F32)]
    return np.concatenate(vals)


def _single_module(values: np.ndarray) -> dict[str, np.ndarray]:
    # one HCAL module: E_HCAL is the value itself, on the edge as chosen
    n = len(values)
    z, u = np.zeros(n, F32), np.zeros(n, np.uint8)
    return {"e_ecal": values, "e_ps": z, "e_hcal": values.reshape(n, 1).copy(), "e_veto": z,
            "e_srd": z, "mult": u, "sat": u, "missing": u, "cond": u, "bits": u, "shadow": u}


@pytest.mark.parametrize("cfg", _ODD, ids=lambda c: f"{c.beam_energy_gev}x{c.ecal_bins}")
def test_bins_on_and_beside_every_edge_match_boost_histogram(cfg: MonitorConfig) -> None:
    v = _edge_values(cfg)
    _, s = compare(_single_module(v), cfg)
    # and every value on the ECAL x HCAL diagonal too (ECAL edges against HCAL edges)
    rng = np.random.default_rng(0)
    f = _single_module(v)
    f["e_hcal"] = rng.permutation(v).reshape(-1, 1)
    compare(f, cfg)
    assert _filled(s) == len(v)


def test_bins_of_special_values() -> None:
    s0 = Spectra.empty(CFG)  # 0 to 150 GeV in 120 bins of 1.25 GeV
    top = F32(s0.ecal.axes[0].edges[-1])
    v = np.array([np.nan, np.inf, -np.inf, top, np.nextafter(top, F32(0)), 0.0, -0.0,
                  -np.finfo(F32).smallest_subnormal, 1.25, np.nextafter(F32(1.25), F32(0)),
                  28.75], F32)
    _, s = compare(_single_module(v))
    h = s.ecal.view(flow=True)  # [underflow, 120 bins, overflow]
    assert h[-1] == 3  # NaN, inf and the upper edge
    assert h[0] == 2  # -inf and -1.4e-45
    assert h[-2] == 1  # just below the upper edge
    assert h[1] == 3 and h[2] == 1  # 0, -0 and just below 1.25; 1.25 opens bin 1
    # boost computes the bin from (x - lo) / delta, not from the edges it reports: 28.75
    # lies below the reported lower edge of bin 23 and is counted in it all the same
    assert s.ecal.axes[0].edges[23] > 28.75 and h[24] == 1
    assert s.hcal_sum != s.hcal_sum  # inf - inf: NaN, as np.nansum gives


# --- thresholds: compared in float32, as NumPy does -----------------------------------------


def test_a_threshold_that_float32_rounds_down_is_met_by_its_float32_value() -> None:
    cfg = MonitorConfig(ps_min_gev=0.7)  # float32(0.7) = 0.69999999 < 0.7
    f, _ = features(np.random.default_rng(9), 200)
    f["e_ps"][:] = F32(0.7)
    c, _ = compare(f, cfg)
    assert float(F32(0.7)) < 0.7
    assert c.species[0] == int((f["e_srd"] >= F32(cfg.srd_min_gev)).sum()) > 0


# --- generated features ---------------------------------------------------------------------


@st.composite
def _configs(draw: st.DrawFn) -> MonitorConfig:
    fl = st.floats
    srd_min = draw(fl(0.0, 0.5))
    sig_ecal = draw(fl(0.1, 900.0))
    p_min = draw(st.sampled_from([90.0, 0.0]) | fl(0.0, 500.0))
    dimu_min = draw(st.sampled_from([3.0, 0.0]) | fl(0.0, 50.0))
    return MonitorConfig(
        beam_energy_gev=draw(st.sampled_from([100.0, 0.37, 333.3]) | fl(0.01, 1000.0)),
        srd_min_gev=srd_min, srd_max_gev=draw(fl(srd_min + 1e-3, 10.0)),
        ps_min_gev=draw(st.sampled_from([0.3, 0.7, 0.0]) | fl(0.0, 100.0)),
        ecal_min_ratio=draw(fl(0.0, 2.0)), veto_zero_gev=draw(fl(1e-4, 1.0)),
        hcal_zero_gev=draw(fl(1e-3, 100.0)), muon_module_min_gev=draw(fl(0.0, 100.0)),
        muon_hcal_max_gev=draw(fl(0.1, 1000.0)), hadron_hcal_min_gev=draw(fl(0.1, 1000.0)),
        signal_ecal_max_gev=sig_ecal, signal_hcal_max_gev=draw(fl(0.1, 1000.0)),
        trigger_ecal_max_gev=draw(fl(sig_ecal + 0.01, 1000.0)), signal_p_min_gev=p_min,
        signal_p_max_gev=draw(fl(p_min + 0.01, 1000.0)),
        signal_max_tracks=draw(st.sampled_from([1, 255]) | st.integers(1, 255)),
        dimuon_module_min_gev=dimu_min, dimuon_module_max_gev=draw(fl(dimu_min + 0.01, 100.0)),
        dimuon_min_modules=draw(st.sampled_from([2, 1]) | st.integers(1, 16)),
        ecal_bins=draw(st.sampled_from([4, 7, 120, 2000]) | st.integers(4, 300)),
        hcal_bins=draw(st.sampled_from([4, 13, 120]) | st.integers(4, 300)),
        plane_bins=draw(st.sampled_from([4, 5, 60]) | st.integers(4, 80)),
        spectrum_max_ratio=draw(st.sampled_from([1.5, 0.1, 10.0]) | fl(0.01, 10.0)),
        isolation_before_ns=draw(st.sampled_from([105, 0, 65534]) | st.integers(0, 65534)),
        isolation_after_ns=draw(st.sampled_from([35, 0, 65534]) | st.integers(0, 65534)))


def _specials(cfg: MonitorConfig) -> list[float]:
    """float32 values on and beside every threshold and edge, and the IEEE specials."""
    t = kernels._thresholds(cfg, track=True)
    cuts = np.concatenate([t, np.nextafter(t, F32(np.inf)), np.nextafter(t, F32(-np.inf)),
                           -t])
    return [float(x) for x in np.concatenate([cuts, _edge_values(cfg)])]


@st.composite
def _slices(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], MonitorConfig, tuple[str, ...]]:
    cfg = draw(_configs())
    n = draw(st.integers(0, 150))
    modules = draw(st.sampled_from([4, 1, 2, 3, 5, 6]))
    value = st.one_of(st.sampled_from(_specials(cfg)), st.floats(width=32),
                      st.floats(-1.0, float(F32(1.2 * cfg.spectrum_max_ratio
                                                * cfg.beam_energy_gev)), width=32))

    def floats(shape: int | tuple[int, int]) -> np.ndarray:
        return draw(hnp.arrays(F32, shape, elements=value))

    f = {"e_ecal": floats(n), "e_ps": floats(n), "e_hcal": floats((n, modules)),
         "e_veto": floats(n), "e_srd": floats(n)}
    for name in BYTES:
        f[name] = draw(hnp.arrays(np.uint8, n))
    if draw(st.booleans()):  # the spectrometer's arrays, or a stream from before it
        f["p"] = floats(n)
        f["ntrk"] = draw(hnp.arrays(np.uint8, n))
    if draw(st.booleans()):  # the trigger's neighbour gaps, or a stream from before them
        near = [cfg.isolation_before_ns, cfg.isolation_after_ns]
        gap = st.sampled_from([0, 65535, *near, *(g + 1 for g in near)]) | st.integers(
            0, 65535)
        f["dt_prev"] = draw(hnp.arrays(np.uint16, n, elements=gap))
        f["dt_next"] = draw(hnp.arrays(np.uint16, n, elements=gap))
    missing = draw(st.sampled_from(["none", "some", "all"]))
    if missing == "none":
        f["missing"][:] = 0
    elif missing == "some":
        f["missing"][draw(hnp.arrays(np.bool_, n))] = 0
    else:
        f["missing"][f["missing"] == 0] = 1
    boards = [f"B{i}" for i in range(draw(st.integers(0, 8)))]
    if boards and draw(st.booleans()):  # an ECAL among them: its `sat` bit cuts box and C
        boards[draw(st.integers(0, len(boards) - 1))] = "ECAL"
    return f, cfg, tuple(boards)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_slices())
def test_generated_slices_match(case: tuple[dict[str, np.ndarray], MonitorConfig,
                                            tuple[str, ...]]) -> None:
    f, cfg, boards = case
    c, s = compare(f, cfg, boards)
    assert c.events == len(f["e_ecal"]) and _filled(s) == c.complete


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9])
def test_tiny_and_empty_slices(n: int) -> None:
    f, _ = features(np.random.default_rng(n), n)
    f["bits"][:] = 0xFF
    c, s = compare(f)
    assert c.events == n and list(c.triggers) == [n] * 4 and c.accepted == n
    assert _filled(s) == n and (s.ecal_sum > 0) == (n > 0)


def test_boards_beyond_the_eight_bits_of_missing_are_never_missing() -> None:
    f, _ = features(np.random.default_rng(2), 100)
    f["missing"][:] = 0xFF
    boards = [f"B{i}" for i in range(10)]
    c = kernels.aggregate(f, CFG, boards, Spectra.empty(CFG))
    assert c.missing_board == {**{f"B{i}": 100 for i in range(8)}, "B8": 0, "B9": 0}


# --- compiled once, at start --------------------------------------------------------------


def test_warm_up_compiles_what_a_decoded_slice_needs() -> None:
    kernels.warm_up(CFG)
    [sig] = kernels._aggregate.signatures
    msgs, _ = spill_messages(np.random.default_rng(3), slices=1, slice_events=300)
    msg = decode([bytes(b) for b in encode(msgs[0])])  # read-only, as from a socket
    assert msg.kind is Kind.FEATURES and not msg.arrays["e_ecal"].flags.writeable
    kernels.aggregate(msg.arrays, MonitorConfig(ecal_bins=33), BOARD_NAMES, Spectra.empty(
        MonitorConfig(ecal_bins=33)))
    assert kernels._aggregate.signatures == [sig]  # nothing compiled on the first slice


@pytest.mark.asyncio
async def test_service_warms_the_kernel_before_taking_messages(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import monitors.service as service

    warmed: list[MonitorConfig] = []
    monkeypatch.setattr(service, "warm_up", warmed.append)
    cfg = MonitorConfig(plane_bins=17)
    ctx = zmq.asyncio.Context()
    try:
        svc = MonitorService("inproc://monitor-warm", config=cfg, registry=CollectorRegistry(),
                             ctx=ctx, tick_s=0.02)
        async with svc:
            async with asyncio.timeout(10):
                while not warmed:
                    await asyncio.sleep(0.01)
            svc.stop()
            await svc.wait()
        assert warmed == [cfg]
    finally:
        ctx.term()
