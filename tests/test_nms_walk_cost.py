"""tools/nms_walk_cost.py: what the GPU NMS walks read, counted on the emulation."""

from __future__ import annotations

import re

import numpy as np
import pytest

from helpers_run import load_script


def _tool():
    return load_script("tools/nms_walk_cost.py", "nms_walk_cost")


def test_reads_stop_at_the_kept_suppressor_and_kept_boxes_read_their_whole_walk():
    E = _tool().E
    # three identical boxes: rank 0 is kept, ranks 1 and 2 meet it first in their walks; a
    # fourth, kept, box overlaps the first three only a little: its walk reads all three
    boxes = np.float32([[0, 0, 20, 20]] * 3 + [[14, 0, 34, 20], [500, 500, 520, 520]])
    logits = np.float32([4, 3, 2, 1, 0])
    keys = np.arange(5, dtype=np.uint32)
    em = E.emulate_nms(boxes, logits, keys, 0.3, 1.0)
    assert em.kept.tolist() == [0, 3, 4]
    cost = E.walk_reads(boxes, logits, keys, em.kept, 0.3, 1.0)
    assert cost.reads.tolist() == [0, 1, 1, 3, 0] and cost.rows > 0 and cost.sampled == 5
    assert cost.summary()["reads_max"] == 3


def test_cli_on_a_small_clustered_map(capsys):
    tool = _tool()
    assert tool.main(["--clustered", "2000", "--sample", "300"]) == 0
    both = capsys.readouterr().out
    assert "per sampled box (300)" in both and "lookahead blocker polls mean" in both
    assert tool.main(["--clustered", "2000", "--sample", "300", "--no-lookahead"]) == 0
    walk_only = capsys.readouterr().out
    assert "lookahead" not in walk_only
    # the kept set of the numpy NMS (--no-lookahead) and of the emulation give the same walks
    line = re.compile(r"^clustered map, 2000 target: (\d+) candidates, NMS threshold 0\.3; per "
                      r"sampled box \(300\): candidates read \(walk order(?: / lookahead)?\) mean "
                      r"([\d.]+)(?: / ([\d.]+))?, p99 (\d+)(?: / (\d+))?, max (\d+)(?: / (\d+))?;")
    m_both, m_walk = line.match(both), line.match(walk_only)
    assert m_both and m_walk, (both, walk_only)
    assert 1800 <= int(m_walk[1]) <= 2200
    assert [m_both[i] for i in (1, 2, 4, 6)] == [m_walk[i] for i in (1, 2, 4, 6)]
    # the lookahead rule reads at least what the walk-order rule reads
    assert float(m_both[3]) >= float(m_both[2]) and int(m_both[7]) >= int(m_both[6])
    rounds = re.search(r"; rounds \(walk order / lookahead\) (\d+) / (\d+)$", both.strip())
    assert rounds and int(rounds[1]) > 0 and int(rounds[2]) > 0


# --- the lookahead rule's reads -----------------------------------------------------------------

def _square_boxes(corners, side=32.0):
    xy = np.asarray(corners, np.float64)
    return np.concatenate([xy, xy + side], 1).astype(np.float32)


def _one_cell_walks(E, boxes, thresh, offset):
    """Every box in one grid cell: each walk is the earlier ranks in rank order (checked)."""
    assert len(set(E.cell_codes(boxes, offset).tolist())) == 1
    w, h = E.geometry(boxes, offset)[:2]
    codes = E.cell_codes(boxes, offset)
    perm = np.argsort(codes, kind="stable")
    for j in range(len(boxes)):
        wk = E.walks(boxes, w, h, np.array([j]), codes[perm], perm.astype(np.uint32), thresh, offset)
        assert wk.i.tolist() == list(range(j))


def _both_rules(E, boxes, thresh, offset, sample=None):
    """(walk reads with the lookahead counts, lookahead decision rounds per rank, emulation)."""
    n = len(boxes)
    logits, keys = -np.arange(n, dtype=np.float32), np.arange(n, dtype=np.uint32)
    em = E.emulate_nms(boxes, logits, keys, thresh, offset)
    iso = E.geometry(boxes[em.order], offset)[3]
    status, decided = E.lookahead_schedule(n, iso, em.edge_j, em.edge_i)
    np.testing.assert_array_equal(status, em.status)
    cost = E.walk_reads(boxes, logits, keys, em.kept, thresh, offset, sample, decided=decided)
    return cost, decided, em


def test_lookahead_rewalks_a_chain_from_each_blocker():
    """32 px squares at x = 0, 6, 12, 13 (t = 0.5: overlap iff 6 px or less apart in x): P-Q,
    Q-R, Q-S, R-S overlap; greedy keeps P and R. Walks: Q [P], R [P Q], S [P Q R]. Lookahead,
    lock-step: round 1 every box reads its whole walk (nothing but P's empty walk decides);
    Q (blocker P, KEPT in 1) passes again in round 2 from P: 1 read, suppressed. R waits on
    Q (decided in 2), passes in round 3 from Q: Q (suppressed), end: kept, 1 read. S waits on
    Q too; in round 3 it re-reads Q and R (R still undecided: the new blocker), in round 4 R
    (KEPT): 3 + 2 + 1 reads, 3 polls. The walk-order rule reads up to P, P, the whole walk,
    and up to R: 0, 1, 2, 3."""
    E = _tool().E
    boxes = _square_boxes([[0, 0], [6, 0], [12, 0], [13, 0]])
    _one_cell_walks(E, boxes, 0.5, 0.0)
    cost, decided, em = _both_rules(E, boxes, 0.5, 0.0)
    assert em.kept.tolist() == [0, 2] and set(zip(em.edge_i.tolist(), em.edge_j.tolist())) == \
        {(0, 1), (1, 2), (1, 3), (2, 3)}
    assert decided.tolist() == [1, 2, 3, 4]
    assert cost.reads.tolist() == [0, 1, 2, 3]
    assert cost.lookahead_reads.tolist() == [0, 2, 3, 6]
    assert cost.lookahead_polls.tolist() == [0, 1, 2, 3]
    s = cost.summary()
    assert (s["reads_max"], s["reads_lookahead_max"], s["polls_lookahead_max"]) == (3, 6, 3)
    assert s["reads_lookahead_mean"] == 2.8 and s["polls_lookahead_mean"] == 1.5


def test_lookahead_reads_past_an_undecided_box_to_a_kept_one():
    """Z, A, B, K, X (rank order, one cell, t = 0.5): Z-A, A-B, A-X, B-X, K-X overlap. X's
    walk is [Z A B K]: round 1 reads all 4 (blocker A); A is suppressed in round 2, so X polls
    A in rounds 2 and 3 and passes again in round 3 from A: A (suppressed), B (undecided: B
    decides in round 3), K (kept in round 1): suppressed, 3 more reads. The walk-order rule
    stops X at B, the first overlapping box greedy keeps: 3 reads. K overlaps no earlier box:
    kept in round 1, its whole walk under both rules."""
    E = _tool().E
    boxes = _square_boxes(np.array([[-4, -10], [0, -4], [4, -6], [0, 10], [0, 0]]) + [104, 80])
    _one_cell_walks(E, boxes, 0.5, 0.0)
    cost, decided, em = _both_rules(E, boxes, 0.5, 0.0)
    assert em.kept.tolist() == [0, 2, 3] and set(zip(em.edge_i.tolist(), em.edge_j.tolist())) == \
        {(0, 1), (1, 2), (1, 4), (2, 4), (3, 4)}
    assert decided.tolist() == [1, 2, 3, 1, 3]
    assert cost.reads.tolist() == [0, 1, 2, 3, 3]
    assert cost.lookahead_reads.tolist() == [0, 2, 3, 3, 7]
    assert cost.lookahead_polls.tolist() == [0, 1, 2, 0, 2]


def _literal_lookahead(E, boxes, thresh, offset):
    """``walk_advance<true>`` statement by statement, in lock-step rounds (every undecided box
    calls it once per round on the previous round's statuses): (status, decision round,
    reads, polls) per rank. Ranks = input order (logits descending, as ``_both_rules``)."""
    n = len(boxes)
    w, h, area, iso = E.geometry(boxes, offset)
    codes = E.cell_codes(boxes, offset)
    perm = np.argsort(codes, kind="stable")
    wk = E.walks(boxes, w, h, np.flatnonzero(~iso), codes[perm], perm.astype(np.uint32), thresh,
                 offset)
    hit = E.overlaps(boxes[wk.i], area[wk.i], boxes[wk.j], area[wk.j], thresh, offset)
    walk = {j: [] for j in range(n)}
    for j, i, overlapping in zip(wk.j.tolist(), wk.i.tolist(), hit.tolist()):
        walk[j].append((i, overlapping))
    status = [E.KEPT if iso[j] else E.UNDECIDED for j in range(n)]
    decided, reads, polls = [0] * n, [0] * n, [0] * n
    cursor, blocker = [0] * n, [None] * n
    rnd = 0
    while E.UNDECIDED in status:
        rnd += 1
        prev = list(status)
        for j in range(n):
            if prev[j] != E.UNDECIDED:
                continue
            if blocker[j] is not None:
                polls[j] += 1
                if prev[blocker[j]] == E.UNDECIDED:
                    continue
                blocker[j] = None
            p, resume, result = cursor[j], None, E.KEPT
            while p < len(walk[j]):
                i, overlapping = walk[j][p]
                reads[j] += 1
                if overlapping and prev[i] == E.KEPT:
                    result = E.SUPPRESSED
                    break
                if overlapping and prev[i] == E.UNDECIDED and blocker[j] is None:
                    blocker[j], resume = i, p
                p += 1
            if result == E.KEPT and blocker[j] is not None:
                cursor[j] = resume  # back to the blocker's position
                continue
            status[j], decided[j] = result, rnd
    return np.array(status), np.array(decided), np.array(reads), np.array(polls), rnd


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lookahead_reads_follow_the_kernel_walk_on_random_clusters(seed):
    """Random clustered boxes: the vectorised count equals a literal transcription of the
    kernel's lookahead walk (statuses, rounds, reads, polls). And what holds exactly in the
    lock-step model: round 1 sees no decided box but the isolated ones, so every box with an
    earlier overlapping box waits, reads its whole walk in round 1 and more later (lookahead
    reads > walk length >= walk-order reads); a box that never waits (decides in round 1, no
    poll) has no earlier overlapping box, is kept and reads its whole walk under both rules;
    polls = decision round - 1."""
    E = _tool().E
    rng = np.random.default_rng(seed)
    n = 500
    centres = rng.uniform(0, 160, (12, 2))[rng.integers(0, 12, n)] + rng.normal(0, 6, (n, 2))
    sizes = rng.uniform(14, 40, n)
    boxes = np.concatenate([centres - sizes[:, None] / 2, centres + sizes[:, None] / 2], 1)
    boxes = boxes.astype(np.float32)
    cost, decided, em = _both_rules(E, boxes, 0.3, 1.0)
    status, rounds, reads, polls, last = _literal_lookahead(E, boxes, 0.3, 1.0)
    np.testing.assert_array_equal(status, em.status)
    np.testing.assert_array_equal(rounds, decided)
    assert last == E.emulate_nms(boxes, -np.arange(n, dtype=np.float32), np.arange(n), 0.3, 1.0,
                                 lookahead=True).rounds >= 3
    np.testing.assert_array_equal(cost.lookahead_reads, reads)
    np.testing.assert_array_equal(cost.lookahead_polls, polls)
    np.testing.assert_array_equal(polls, decided - 1)
    # walk lengths (every earlier box in the windows) and the boxes with an earlier overlap
    w, h = E.geometry(boxes, 1.0)[:2]
    codes = E.cell_codes(boxes, 1.0)
    perm = np.argsort(codes, kind="stable")
    wk = E.walks(boxes, w, h, np.arange(n), codes[perm], perm.astype(np.uint32), 0.3, 1.0)
    length = np.bincount(wk.j, minlength=n)
    overlapped = np.zeros(n, bool)
    overlapped[em.edge_j] = True
    waits = polls > 0
    assert waits.sum() > n // 2 and (polls >= 2).sum() > 10 and (~waits).sum() > 5
    np.testing.assert_array_equal(waits, overlapped)
    assert (cost.lookahead_reads[waits] > length[waits]).all()
    assert (length >= cost.reads).all() and (cost.reads[waits] < length[waits]).any()
    np.testing.assert_array_equal(cost.lookahead_reads[~waits], cost.reads[~waits])
    np.testing.assert_array_equal(cost.reads[~waits], length[~waits])
    assert (em.status[~waits] == E.KEPT).all()
    # a sample reads what those boxes read in the whole count
    part = E.walk_reads(boxes, -np.arange(n, dtype=np.float32), np.arange(n), em.kept, 0.3, 1.0,
                        sample=100, seed=seed, decided=decided)
    picked = np.sort(np.random.default_rng(seed).choice(n, 100, replace=False))
    np.testing.assert_array_equal(part.lookahead_reads, reads[picked])
    np.testing.assert_array_equal(part.reads, cost.reads[picked])


def test_lookahead_reads_refuse_a_schedule_of_other_boxes():
    """The passes must decide every box where ``decided`` says: a schedule one round late, or
    without ``decided`` no lookahead figures at all."""
    E = _tool().E
    boxes = _square_boxes([[0, 0], [6, 0], [12, 0], [13, 0]])
    cost, decided, em = _both_rules(E, boxes, 0.5, 0.0)
    logits, keys = -np.arange(4, dtype=np.float32), np.arange(4, dtype=np.uint32)
    with pytest.raises(ValueError, match="not the lookahead schedule"):
        E.walk_reads(boxes, logits, keys, em.kept, 0.5, 0.0, decided=decided + 1)
    with pytest.raises(ValueError, match="shape"):
        E.walk_reads(boxes, logits, keys, em.kept, 0.5, 0.0, decided=decided[:3])
    plain = E.walk_reads(boxes, logits, keys, em.kept, 0.5, 0.0)
    assert plain.lookahead_reads is None and "reads_lookahead_mean" not in plain.summary()
    np.testing.assert_array_equal(plain.reads, cost.reads)
