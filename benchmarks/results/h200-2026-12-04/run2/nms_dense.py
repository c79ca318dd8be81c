"""Both CUDA NMS resolve rules on dense maps: clustered 200k, and a uniform random map (every
cell of the active templates just above threshold, like seeded random weights at prob 0.03)."""
import sys, os, time, dataclasses
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
import numpy as np
import bench_scores as B
from tinyfaces_trt.core.config import DetectorConfig
cfg = DetectorConfig()
cases = []
d = B.clustered_score_map(200000, cfg)
cases.append(("clustered 200k", d))
rng = np.random.default_rng(1)
sm = d.score_map.copy()
nt = B.NUM_TEMPLATES
act = np.flatnonzero(B.active_templates(d.level.scale, cfg))
for frac, name in ((0.05, "uniform 5%"), (0.25, "uniform 25%")):
    s = sm.copy()
    s[0, :nt] = cfg.logit_thresh - 3
    mask = rng.random((len(act),) + s.shape[2:]) < frac
    s[0, act] = np.where(mask, cfg.logit_thresh + rng.uniform(0.01, 2, mask.shape), s[0, act])
    s[0, nt:] = rng.normal(0, 0.3, s[0, nt:].shape)
    cases.append((name, dataclasses.replace(d, score_map=s, candidates=int(mask.sum()))))
for name, data in cases:
    rows = {}
    for la in (True, False):
        t0 = time.perf_counter()
        r = B._cuda_row(data, cfg, repeat=3, warmup=1, lookahead=la)
        rows[la] = r
        print(f"{name:15s} cand {r['candidates']:8d} {'lookahead' if la else 'walk     '}: "
              f"decode {r['decode']['median_ms']:.3f} ms NMS {r['nms']['median_ms']:.3f} ms "
              f"kept {r['kept']} ({time.perf_counter()-t0:.1f} s)", flush=True)
    same = np.array_equal(rows[True]["boxes"], rows[False]["boxes"])
    print(f"{name:15s} rules give the same boxes: {same}", flush=True)
