"""The uncapped CUDA NMS algorithm without a GPU: its numpy emulation against the oracle.

``kernels/nms_emulation.py`` emulates ``kernels/src/nms.cu`` step by step (sort keys, size
classes and grid cells, the walks over candidate suppressors, the resolve rule, float32 IoU
with every operation rounded). These tests show that it keeps exactly the boxes of
``runtime/nms.py`` (same indices, same order) on random and adversarial inputs, that the walks
find every overlapping pair a brute-force search finds. The host side of the C functions
(workspace sizes, argument checks) is tested in tests/test_kernels_build.py, on the library it
builds from this checkout.
"""

from __future__ import annotations

import __future__
import inspect
import textwrap

import numpy as np
import pytest

from helpers_kernels import kernel_constants
from helpers_run import REPO, load_script

from tinyfaces_trt.runtime.nms import nms


def _load_emulation():
    """kernels/nms_emulation.py of this checkout, by path (whatever tinyfaces_trt resolves to)."""
    return load_script("kernels/nms_emulation.py", "tinyfaces_nms_emulation")


E = _load_emulation()


def test_the_emulation_uses_the_kernels_constants():
    """The emulation is the kernel's model: its grid, window and resolve constants are
    kernels/src/nms.cu's (and the workspace alignment common.cuh's)."""
    k = kernel_constants("nms.cu", "common.cuh")
    assert k["kIsolatedCell"] == 0xFFFFFFFF and k["kPositionMargin"] == np.float32(2.0 ** -16)
    pairs = {"kXBits": E.X_BITS, "kYBits": E.Y_BITS, "kClassShift": E.CLASS_SHIFT,
             "kXGrain": E.X_GRAIN, "kYGrain": E.Y_GRAIN, "kXBias": E.X_BIAS, "kYBias": E.Y_BIAS,
             "kTopClass": E.TOP_CLASS, "kIsolatedCell": E.ISOLATED_CELL,
             "kWindowMargin": E.WINDOW_MARGIN, "kPositionMargin": E.POSITION_MARGIN,
             "kResolveThreads": E.RESOLVE_THREADS, "kAlign": E.ALIGN,
             "kUndecided": E.UNDECIDED, "kKept": E.KEPT, "kSuppressed": E.SUPPRESSED}
    assert {name: k[name] for name in pairs} == pairs
    assert all(type(k[name]) is type(value) for name, value in pairs.items()
               if isinstance(value, np.floating))


def test_the_benchmarks_block_sort_bound_is_the_kernels(monkeypatch):
    """benchmarks/bench_scores.py adds a row with CUB's sorts only where the default sorts in
    one block: up to kernels/src/block_sort.cuh's kBlockSortMax."""
    k = kernel_constants("block_sort.cuh")
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    bench = load_script("benchmarks/bench_scores.py", "tinyfaces_bench_scores_bound")
    assert k["kBlockSortMax"] == bench.BLOCK_SORT_MAX == 16384 < bench.CUB_SORT_NMS_SIZE


def _boxes(centres, sizes, aspect=None):
    c = np.asarray(centres, np.float64)
    s = np.asarray(sizes, np.float64)
    wh = np.stack([s, s * (1.0 if aspect is None else aspect)], 1)
    return np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)


def _check(boxes, logits, keys, thresh, offset, brute_force=None, rewalk=True):
    """Emulated kept == runtime.nms kept (indices and order), under both resolve rules;
    returns the (walk-order rule's) emulation. ``rewalk=False``: the lookahead rule resolves
    the walk-order emulation's own overlap edges (what emulate_nms(lookahead=True) does after
    walking again: the walks do not depend on the rule) instead of emulating it all again."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    logits = np.asarray(logits, np.float32)
    keys = np.asarray(keys, np.uint32)
    em = E.emulate_nms(boxes, logits, keys, thresh, offset)
    want = nms(boxes.astype(np.float64), logits, keys.astype(np.int64), thresh, offset)
    np.testing.assert_array_equal(em.kept, want)
    if rewalk:
        ahead = E.emulate_nms(boxes, logits, keys, thresh, offset, lookahead=True)  # the other rule
        ahead_kept, ahead_rounds = ahead.kept, ahead.rounds
    else:
        iso = E.geometry(boxes[em.order], offset)[3]
        assert int(iso.sum()) == em.isolated
        status, ahead_rounds = E.resolve_rounds(len(boxes), iso, em.edge_j, em.edge_i, lookahead=True)
        ahead_kept = em.order[np.flatnonzero(status == E.KEPT)]
    np.testing.assert_array_equal(ahead_kept, want)
    assert ahead_rounds <= em.rounds
    assert em.kept.dtype == np.int64
    np.testing.assert_array_equal(em.order[np.argsort(em.order)], np.arange(len(boxes)))
    if brute_force if brute_force is not None else len(boxes) <= 2500:
        found = set(zip(em.edge_i.tolist(), em.edge_j.tolist()))
        assert len(found) == len(em.edge_i)  # each pair visited once
        assert found == E.overlap_pairs_bruteforce(boxes, logits, keys, thresh, offset)
    return em


def _random_scene(rng, n, extent=600.0, smin=2.0, smax=300.0):
    centres = rng.uniform(-20, extent + 20, (n, 2))
    sizes = np.exp(rng.uniform(np.log(smin), np.log(smax), n))
    boxes = _boxes(centres, sizes, rng.uniform(0.7, 1.4, n))
    return boxes, rng.normal(0, 2, n).astype(np.float32), rng.permutation(n).astype(np.uint32)


# --- seeded random scenes ----------------------------------------------------------------------

@pytest.mark.parametrize("thresh, offset", [(0.3, 1.0), (0.5, 0.0), (0.1, 1.0), (0.7, 0.5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_scenes_match_numpy(seed, thresh, offset):
    rng = np.random.default_rng(seed)
    em = _check(*_random_scene(rng, 1500), thresh, offset)
    assert 0 < len(em.kept) < 1500 and em.overlap_pairs > 0


def test_detector_like_clusters_match_numpy():
    """Many jittered candidates per face over all template sizes (as decode produces)."""
    rng = np.random.default_rng(2)
    faces = rng.uniform(0, 800, (40, 2))
    fsize = np.exp(rng.uniform(np.log(8), np.log(200), 40))
    pick = rng.integers(0, 40, 2400)
    scale = np.exp(rng.normal(0, 0.3, 2400))
    centres = faces[pick] + rng.normal(0, 0.15, (2400, 2)) * fsize[pick, None]
    boxes = _boxes(centres, fsize[pick] * scale, rng.uniform(0.8, 1.25, 2400))
    logits = rng.normal(-2, 1.5, 2400).astype(np.float32)
    em = _check(boxes, logits, rng.permutation(2400), 0.3, 1.0)
    assert em.overlap_pairs > 20 * len(em.kept)


# --- adversarial cases ----------------------------------------------------------------------------

@pytest.mark.parametrize("thresh", [0.0, 0.3, 0.999])
def test_all_boxes_identical(thresh):
    n = 600
    boxes = np.tile(np.float32([[10, 20, 50, 70]]), (n, 1))
    em = _check(boxes, np.zeros(n), np.arange(n)[::-1], thresh, 1.0)
    assert em.kept.tolist() == [n - 1]  # equal logits: lowest key first
    assert em.rounds == 2 and em.overlap_pairs == n * (n - 1) // 2


def test_identical_boxes_cost_linear_work_per_round_in_the_kernel_walk():
    """Each walk meets the best box first (lowest rank in the shared cell) and stops there.
    1000 boxes (the walks' n^2 / 2 pairs are this test's time; 3000 took 12 times as long):
    as with 3000, one shared cell, one chunk of the emulation's walks (8192 boxes) and more
    than one of the kernel's resolve chunks (128 boxes)."""
    n = 1000
    boxes = np.tile(np.float32([[0, 0, 30, 30]]), (n, 1))
    em = _check(boxes, -np.arange(n, dtype=np.float32), np.arange(n), 0.5, 1.0, brute_force=False,
                rewalk=False)
    assert em.rounds == 2 and len(em.kept) == 1
    first = np.unique(em.edge_j, return_index=True)[1]
    assert (em.edge_i[first] == 0).all()


@pytest.mark.parametrize("n", [1, 2, 3, 400])
def test_chain_is_the_worst_case_for_rounds(n):
    """Box k overlaps only boxes k-1 and k+1 and scores decrease along the chain: greedy keeps
    every other box and each decision waits for the previous one."""
    x = np.arange(n, dtype=np.float64) * 6.0
    boxes = _boxes(np.stack([x, np.zeros(n)], 1), np.full(n, 10.0))  # IoU(next) = 4/16 > 0.2
    em = _check(boxes, -np.arange(n, dtype=np.float32), np.arange(n), 0.2, 0.0)
    assert em.kept.tolist() == list(range(0, n, 2))
    assert em.rounds == n


class _LimitedNumpy:
    """numpy for recompiled copies of the resolve functions: fails the test after ``limit``
    attribute reads, so a resolve loop without a round bound fails instead of hanging."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def __getattr__(self, name: str):
        self.left -= 1
        if self.left < 0:
            raise AssertionError("the resolve loop never stopped: no round bound")
        return getattr(np, name)


_RESOLVE_SOURCES = {name: textwrap.dedent(inspect.getsource(getattr(E, name)))
                    for name in ("resolve_rounds", "_lookahead_rounds", "lookahead_schedule")}


def _resolve_with_a_read_limit(monkeypatch, old: str = "", new: str = "") -> None:
    """E's resolve functions replaced by copies compiled from their source over
    _LimitedNumpy (resolve_rounds' source with ``old`` -> ``new``, when given)."""
    ns = {**vars(E), "np": _LimitedNumpy(20_000)}
    for name, source in _RESOLVE_SOURCES.items():
        if name == "resolve_rounds" and old:
            assert source.count(old) == 1, old
            source = source.replace(old, new)
        exec(compile(source, E.__file__, "exec", __future__.annotations.compiler_flag), ns)
        monkeypatch.setattr(E, name, ns[name])


def test_a_broken_resolve_rule_raises_instead_of_looping_forever(monkeypatch):
    """Without its "a SUPPRESSED partner is passed" filter the walk-order rule waits forever
    on a suppressed box: in a 3-box chain box 2 waits on box 1, which box 0 suppresses.
    Every round decides the lowest undecided box, so n boxes need at most n rounds: a
    broken rule must stop there with an error (a mutation run hung on it before)."""
    boxes = _boxes(np.stack([np.arange(3) * 6.0, np.zeros(3)], 1), np.full(3, 10.0))
    logits, keys = -np.arange(3, dtype=np.float32), np.arange(3, dtype=np.uint32)
    _resolve_with_a_read_limit(monkeypatch)
    em = E.emulate_nms(boxes, logits, keys, 0.2, 0.0)  # the rule as it is: the chain's n rounds
    assert em.kept.tolist() == [0, 2] and em.rounds == 3
    _resolve_with_a_read_limit(monkeypatch, " & (prev[ei] != SUPPRESSED)", "")
    with pytest.raises(E.ResolveStuckError, match=r"^NMS resolve did not converge: 1 of 3 boxes "
                       r"still undecided after 3 rounds, the most 3 boxes can need"):
        E.emulate_nms(boxes, logits, keys, 0.2, 0.0)


@pytest.mark.parametrize("lookahead", [False, True])
def test_boxes_waiting_on_each_other_raise_instead_of_looping_forever(monkeypatch, lookahead):
    """The edges must be (j, i < j) pairs: two boxes given as each other's partner wait on
    each other for ever, under either rule; the round bound turns that into an error."""
    _resolve_with_a_read_limit(monkeypatch)
    with pytest.raises(E.ResolveStuckError, match="2 of 2 boxes still undecided after 2 rounds"):
        E.resolve_rounds(2, np.zeros(2, bool), np.array([0, 1]), np.array([1, 0]), lookahead)


def test_chain_with_mixed_scores():
    rng = np.random.default_rng(3)
    n = 600
    x = np.cumsum(rng.uniform(3, 7, n))
    boxes = _boxes(np.stack([x, rng.uniform(0, 2, n)], 1), rng.uniform(9, 11, n))
    _check(boxes, rng.normal(size=n), rng.permutation(n), 0.2, 1.0)


@pytest.mark.parametrize("thresh", [0.0, 0.05, 0.3, 0.5])
def test_nested_sizes_from_2_to_2000_px(thresh):
    """Concentric and shifted boxes of every size class: small boxes inside big ones."""
    rng = np.random.default_rng(4)
    n = 900
    sizes = np.exp(rng.uniform(np.log(2), np.log(2000), n))
    centres = 1000 + rng.normal(0, 1, (n, 2)) * sizes[:, None] * 0.3
    boxes = _boxes(centres, sizes, rng.uniform(0.5, 2.0, n))
    _check(boxes, rng.normal(size=n), rng.permutation(n), thresh, 1.0)
    classes = np.unique(E.size_class(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) + 1))
    assert len(classes) >= 10


def test_score_ties_are_broken_by_the_canonical_key():
    rng = np.random.default_rng(5)
    boxes, _, keys = _random_scene(rng, 1500, extent=200)
    logits = np.round(rng.normal(size=1500) * 2).astype(np.float32) / 2  # few distinct values
    logits[:20] = -0.0
    logits[20:40] = 0.0  # -0 and +0 tie
    _check(boxes, logits, keys, 0.3, 1.0)
    np.testing.assert_array_equal(E.nms_order(logits, keys),
                                  np.lexsort((keys.astype(np.int64), -logits.astype(np.float64))))


def test_boxes_at_and_beyond_the_image_border():
    """Negative coordinates, boxes straddling 0 and far outside (cells clamp monotonically)."""
    rng = np.random.default_rng(6)
    n = 1500
    centres = np.concatenate([rng.uniform(-60, 60, (n // 3, 2)), rng.uniform(1860, 1980, (n // 3, 2)),
                              rng.uniform(-1e5, 1e5, (n - 2 * (n // 3), 2))])
    boxes = _boxes(centres, np.exp(rng.uniform(np.log(2), np.log(120), n)))
    boxes[::7, :2] = np.minimum(boxes[::7, :2], 0)  # touching the border
    _check(boxes, rng.normal(size=n), rng.permutation(n), 0.3, 1.0)
    _check(boxes, rng.normal(size=n), rng.permutation(n), 0.3, 0.0)


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_threshold_one_keeps_everything_and_zero_suppresses_any_overlap(offset):
    rng = np.random.default_rng(7)
    boxes, logits, keys = _random_scene(rng, 1200, extent=300, smax=80)
    assert len(_check(boxes, logits, keys, 1.0, offset).kept) == 1200
    em0 = _check(boxes, logits, keys, 0.0, offset)
    assert len(em0.kept) < len(_check(boxes, logits, keys, 0.3, offset).kept)


def test_degenerate_and_non_finite_boxes_are_isolated():
    boxes = np.float32([[0, 0, 10, 10], [5, 5, 5, 20], [0, 0, 10, 10], [3, 3, 2, 8],
                        [np.nan, 0, 10, 10], [0, 0, np.inf, 10], [1, 1, 9, 9]])
    em = _check(boxes, [5, 4, 3, 2, 1, 0, -1], np.arange(7), 0.3, 0.0)
    assert em.kept.tolist() == [0, 1, 3, 4, 5]
    assert em.isolated == 4  # zero width (o = 0), negative width, NaN, infinite


def _edge_pairs(base, t, o, rng, classes=range(1, 10)):
    """Pairs of boxes at the edges of the walks' windows, IoU just above or below t: a narrow
    box against the right (or bottom) edge inside a wide one, of width about t times the wide
    one, which is just under its class's size bound 2^(k+1). Whichever ranks first is the
    suppressor, so both window bounds are met: x1_i near x1_j + (1 - t) w_j (narrow i) and
    near x1_j - (1 - t) w_i (wide i). Pairs lie 4096 px apart on a grid from (base, base)."""
    boxes = []
    for k in classes:
        for eps in (-1e-3, -1e-6, 0.0, 1e-6, 1e-4, 1e-2):
            for axis in (0, 1):
                for _ in range(2):
                    slot = len(boxes) // 2
                    x, y = base + (slot % 15) * 4096.0, base + (slot // 15) * 4096.0
                    wide = 2.0 ** (k + 1) * (1 - 1e-7 * rng.uniform(1, 9))
                    narrow = t * wide * (1 + eps)
                    other = rng.uniform(0.5, 1.5) * wide  # the other side, the same for both
                    start = wide - narrow
                    a = np.array([0.0, 0.0, wide - o, other - o])
                    b = np.array([start, 0.0, start + narrow - o, other - o])
                    if axis == 1:
                        a, b = a[[1, 0, 3, 2]], b[[1, 0, 3, 2]]
                    boxes += [a + [x, y, x, y], b + [x, y, x, y]]
    return np.array(boxes, np.float32)


@pytest.mark.parametrize("base", [0.0, -3000.25, 12345.5, 6.0e4])
@pytest.mark.parametrize("t, o", [(0.3, 1.0), (0.5, 0.0), (0.7, 1.0), (0.05, 0.0)])
def test_windows_hold_every_pair_at_the_iou_threshold(base, t, o):
    """The position windows and size classes are bounds derived from IoU > t plus rounding
    margins: boxes placed at those bounds, far from 0 (large float32 ulps), are all found."""
    rng = np.random.default_rng(int(base) % 97 + int(100 * t))
    boxes = _edge_pairs(base, t, o, rng)
    n = len(boxes)
    logits, keys = rng.normal(size=n).astype(np.float32), rng.permutation(n).astype(np.uint32)
    em = E.emulate_nms(boxes, logits, keys, t, o)
    found = set(zip(em.edge_i.tolist(), em.edge_j.tolist()))
    brute = E.overlap_pairs_bruteforce(boxes, logits, keys, t, o)
    assert found == brute
    assert 40 < len(brute) < n // 2 - 40  # pairs on both sides of the threshold


def test_a_window_two_percent_too_tight_misses_pairs_at_the_bounds(monkeypatch):
    """The edge pairs above do reach the window bounds: shrinking the position windows by 2%
    (the size classes unchanged) loses overlapping pairs."""
    real = E.windows

    def tighter(bj, wj, hj, k, thresh, offset):
        return real(bj, wj, hj, k, 1 - (1 - thresh) / 1.02, offset)

    monkeypatch.setattr(E, "windows", tighter)
    missed = 0
    for base, t, o in ((-3000.25, 0.05, 0.0), (12345.5, 0.05, 0.0), (12345.5, 0.3, 1.0)):
        rng = np.random.default_rng(12)
        boxes = _edge_pairs(base, t, o, rng)
        n = len(boxes)
        logits, keys = rng.normal(size=n).astype(np.float32), rng.permutation(n).astype(np.uint32)
        em = E.emulate_nms(boxes, logits, keys, t, o)
        found = set(zip(em.edge_i.tolist(), em.edge_j.tolist()))
        missed += len(E.overlap_pairs_bruteforce(boxes, logits, keys, t, o) - found)
    assert missed >= 10  # 16 with these seeds (the misses need a bound near a cell edge)


@pytest.mark.parametrize("n", [0, 1])
def test_tiny_inputs(n):
    em = _check(np.zeros((n, 4)) + [0, 0, 4, 4], np.zeros(n), np.arange(n), 0.3, 1.0)
    assert em.kept.tolist() == list(range(n)) and em.rounds == n


def test_large_scene_of_200k_candidates():
    """200k candidates in 2000 tight clusters of ~100 (as decode produces around faces)."""
    rng = np.random.default_rng(8)
    n_faces, n = 2000, 200_000
    faces = rng.uniform(0, 6000, (n_faces, 2))
    fsize = np.exp(rng.uniform(np.log(8), np.log(64), n_faces))
    pick = rng.integers(0, n_faces, n)
    centres = faces[pick] + rng.normal(0, 0.05, (n, 2)) * fsize[pick, None]
    boxes = _boxes(centres, fsize[pick] * np.exp(rng.normal(0, 0.1, n)), rng.uniform(0.9, 1.1, n))
    em = _check(boxes, rng.normal(-2, 1, n), rng.permutation(n), 0.3, 1.0, rewalk=False)
    assert len(em.kept) < 2 * n_faces and em.rounds < 200
    assert em.overlap_pairs < 60 * n and em.candidate_pairs < 2 * em.overlap_pairs


# --- memory ----------------------------------------------------------------------------------------

def test_workspace_is_linear_in_the_candidate_count():
    assert E.workspace_bytes(1) < 2 << 20
    at_650k = E.workspace_bytes(650_000)
    assert 69 * 650_000 + (1 << 20) <= at_650k < 69 * 650_000 + (1 << 20) + 4096
    assert at_650k < 47e6  # the dense mask needed 53 GB here


# --- the float32 oracle of the GPU tests, and float32 vs float64 decodes -----------------------

@pytest.mark.parametrize("t, o", [(0.3, 1.0), (0.5, 0.0), (0.05, 0.0)])
def test_the_float32_greedy_oracle_keeps_the_emulations_boxes(t, o):
    """helpers_kernels.greedy_nms_f32 (the GPU tests' fast exact oracle) == the emulation,
    also where float32 and float64 IoU disagree (pairs within 1e-6 of t) and where float32
    areas overflow (two identical boxes of side 2e19: the kernel keeps both, numpy one)."""
    from helpers_kernels import greedy_nms_f32

    rng = np.random.default_rng(int(100 * t) + int(o))
    pairs = _edge_pairs(12345.5, t, o, rng)
    scene, _, _ = _random_scene(rng, 1500)
    huge = np.float32([[0, 0, 2e19, 2e19], [0, 0, 2e19, 2e19], [1, 1, 3e19, 3e19]])
    boxes = np.concatenate([pairs, scene, huge, np.float32([[0, 0, -1, 5], [np.nan, 0, 1, 1]])])
    n = len(boxes)
    logits = np.round(rng.normal(size=n), 1).astype(np.float32)
    keys = rng.permutation(n).astype(np.uint32)
    want = E.emulate_nms(boxes, logits, keys, t, o).kept
    np.testing.assert_array_equal(greedy_nms_f32(boxes, logits, keys, t, o), want)
    numpy64 = nms(boxes.astype(np.float64), logits, keys.astype(np.int64), t, o)
    assert len(np.setxor1d(want, numpy64)) > 0  # the float32 rules matter on this input
    assert {n - 5, n - 4} <= set(want.tolist())  # both identical huge boxes (areas overflow)


def test_the_float32_oracle_on_subnormal_areas():
    """Boxes 1.0 and 0.92 wide, 7 and 6 x 2^-149 tall: float32 areas 7q and 6q (float64 7q,
    5.52q: below t = 0.82 times the first). The oracle's overlap index must not rule the pair
    out by the float64 area ratio (the second box lies in the next block, so only the index
    can pair them): the kernel suppresses it, so must the oracle."""
    from helpers_kernels import greedy_nms_f32

    q = np.float32(2.0 ** -149)
    pair = np.array([[0, 0, 1.0, 7 * q], [0, 0, 0.92, 6 * q]], np.float32)
    far = np.array([[1000 + 10 * k, 0, 1005 + 10 * k, 5] for k in range(127)], np.float32)
    boxes = np.concatenate([pair[:1], far, pair[1:]])
    logits = np.linspace(10, 0, len(boxes)).astype(np.float32)
    keys = np.arange(len(boxes)).astype(np.uint32)
    want = E.emulate_nms(boxes, logits, keys, 0.82, 0.0).kept
    assert 128 not in want.tolist()
    np.testing.assert_array_equal(greedy_nms_f32(boxes, logits, keys, 0.82, 0.0), want)


def test_float32_decode_of_a_1080p_pyramid_differs_from_float64_only_at_the_threshold():
    """The host side of tests/test_kernels_gpu.py's 650k-candidate case: its maps decoded in
    float32 (as decode.cu, unfused) keep 21018 boxes under the kernel's float32 NMS, numpy's
    float64 decode + NMS 21019: two pairs at IoU 0.3 - 2.5e-7 (float64) flip and one box follows from
    them, which helpers_kernels.assert_near_float64_nms accepts (a box dropped for no such
    reason is refused: the next test)."""
    from helpers_kernels import (assert_near_float64_nms, candidate_count, decode_f32,
                                 greedy_nms_f32, random_maps)
    from tinyfaces_trt.core.config import DetectorConfig
    from tinyfaces_trt.core.pyramid import plan_pyramid

    config = DetectorConfig(prob_thresh=0.03)
    levels = plan_pyramid(1080, 1920, config)
    maps = random_maps(np.random.default_rng(24), levels, cls_mean=-3.9, cls_sigma=1.0)
    boxes, logits, keys = decode_f32(maps, levels, config)
    assert len(boxes) == candidate_count(maps, levels, config) == 639_068
    kept = greedy_nms_f32(boxes, logits, keys, config.nms_thresh, config.box_pixel_offset)
    assert len(kept) == 21018
    d = assert_near_float64_nms(keys[kept], maps, levels, config)
    assert d["numpy_kept"] == 21019
    assert sorted(d["only_numpy"]) == [3763725, 3775838] and d["only_float32"] == [3906400]
    assert {key: r[0] for key, r in d["reasons"].items()} == {3763725: "near", 3775838: "near",
                                                              3906400: "cascade"}
    assert all(abs(r[2] - 0.3) < 2.5e-7 for r in d["reasons"].values() if r[0] == "near")


def test_a_box_dropped_far_from_the_threshold_is_not_explained():
    """helpers_kernels.float64_discrepancies refuses a difference no threshold pair explains
    (a small pyramid, where float32 and float64 keep the same boxes)."""
    from helpers_kernels import decode_f32, float64_discrepancies, greedy_nms_f32, random_maps
    from tinyfaces_trt.core.config import DetectorConfig
    from tinyfaces_trt.core.pyramid import plan_pyramid

    config = DetectorConfig(prob_thresh=0.03)
    levels = plan_pyramid(240, 320, config)
    maps = random_maps(np.random.default_rng(24), levels, cls_mean=-3.9, cls_sigma=1.0)
    boxes, logits, keys = decode_f32(maps, levels, config)
    kept = keys[greedy_nms_f32(boxes, logits, keys, config.nms_thresh, config.box_pixel_offset)]
    assert len(kept) > 100
    same = float64_discrepancies(kept, maps, levels, config)
    assert same["only_numpy"] == [] and same["only_float32"] == [] and same["unexplained"] == []
    tampered = np.delete(kept, 50)  # a kept box far from any threshold pair, dropped
    assert float64_discrepancies(tampered, maps, levels, config)["unexplained"] == [int(kept[50])]
