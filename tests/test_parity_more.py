"""tf-parity: an interrupted run (Ctrl-C, SIGTERM), matched pairs of two different boxes
left by an NMS near-tie (:func:`~tinyfaces_trt.parity.compare.nms_swapped`), and NMS flips
measured as the NMS measured them (its "+1" IoU convention, boxes before clipping)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.pyramid import active_templates, plan_pyramid
from tinyfaces_trt.parity.cli import main
from tinyfaces_trt.parity.compare import TOLERANCES, box_iou, compare_detections
from tinyfaces_trt.parity.harness import ParityResult, ReferenceCase, compare_runner
from tinyfaces_trt.parity.report import results_to_json
from tinyfaces_trt.runtime.postprocess import postprocess_levels

FP16 = TOLERANCES["fp16"].detections
FP32 = TOLERANCES["fp32"].detections

# ---------------------------------------------------------------------------------------------
# NMS swaps
# ---------------------------------------------------------------------------------------------

# Final detections of a faithful fp16 export (seeded ResNet-50 checkpoint, 33x47, score maps
# within 3.1e-4): the near-tied RIVAL and HIGH overlap (IoU 0.495 > nms 0.3); the reference
# keeps RIVAL, which suppresses HIGH, and keeps LOW; the fp16 network keeps HIGH, which
# suppresses RIVAL and LOW. LOW and HIGH, two different boxes, overlap at IoU 0.854 >= 0.8.
RIVAL = [14.58689, 21.49606, 32.0, 46.0, 0.60263]
LOW = [0.0, 23.02355, 32.0, 46.0, 0.55126]
HIGH = [0.0, 19.08395, 32.0, 46.0, 0.60264]


def _compare(reference, test):
    return compare_detections(np.array(reference, dtype=float).reshape(-1, 5),
                              np.array(test, dtype=float).reshape(-1, 5), 0.5, 0.3, FP16)


@pytest.mark.parametrize("reference, test", [([RIVAL, LOW], [HIGH]), ([HIGH], [RIVAL, LOW])],
                         ids=["test-keeps-high", "reference-keeps-high"])
def test_a_pair_of_boxes_swapped_by_an_nms_near_tie_is_excused(reference, test):
    c = _compare(reference, test)
    assert c.passed, c.failures
    assert (c.n_matched, c.nms_swapped, c.nms_ambiguous) == (0, 1, 3)
    assert c.max_score_diff == 0.0 and c.missing_firm == c.extra_firm == 0
    r = ParityResult("onnxruntime-fp16", "fp16", 33, 47, 2, detections=c)
    assert results_to_json([r])[0]["detections"]["nms_swapped"] == 1


@pytest.mark.parametrize("reference, test, failures", [
    # a pair whose probs differ, no rival near it
    ([LOW], [HIGH], ("dprob 5.1e-02 > 0.05",)),
    # the same box with another prob, beside a near-tied box that both sides keep
    ([RIVAL, LOW], [RIVAL, LOW[:4] + [0.61126]], ("dprob 6.0e-02 > 0.05",)),
    # the unmatched rival is no near-tie of the higher box (0.66 vs 0.603)
    ([RIVAL[:4] + [0.66], LOW], [HIGH], ("missing 1 > 0 (firm reference detections without a "
                                         "test match at IoU >= 0.8)", "dprob 5.1e-02 > 0.05")),
    # the unmatched rival is tied with the lower box of the pair (0.552), not the higher
    ([RIVAL[:4] + [0.552], LOW], [HIGH], ("missing 1 > 0 (firm reference detections without a "
                                          "test match at IoU >= 0.8)", "dprob 5.1e-02 > 0.05")),
], ids=["alone", "rival-kept-on-both-sides", "rival-not-tied", "rival-tied-with-the-lower-box"])
def test_a_pair_whose_prob_differs_without_an_nms_swap_still_fails(reference, test, failures):
    c = _compare(reference, test)
    assert c.nms_swapped == 0 and c.failures == failures


# ---------------------------------------------------------------------------------------------
# NMS flips measured as the NMS measured them
# ---------------------------------------------------------------------------------------------

# The unmatched final detections of a faithful fp32 export reported FAILED (seeded ResNet-50
# checkpoint "ck50", 131x97, maps within 5.1e-7, NMS with the "+1" pixel convention), row for
# row. Three boxes tied to ~1e-6 flip their NMS order: the test keeps T98, which suppresses
# R105's counterpart; the reference keeps R92, which suppresses T98. The R92-T98 link has IoU
# 0.314 under the NMS's "+1" convention (> nms 0.3) but 0.283 in continuous areas.
R92 = [24.89726, 48.18186, 47.293705, 62.493362, 0.5411398]
R105 = [21.971136, 58.576393, 45.961586, 76.92196, 0.53766656]
T92 = [32.897255, 48.181835, 55.293716, 62.493332, 0.5411398]
T98 = [24.897478, 56.18182, 47.293602, 70.49346, 0.54113865]
T101 = [12.58287, 45.51196, 44.255962, 65.75159, 0.54113835]


def test_the_failed_fp32_case_is_an_nms_flip_under_the_nms_iou_convention():
    reference = np.array([R92, R105], dtype=np.float32)
    test = np.array([T92, T98, T101], dtype=np.float32)
    assert box_iou(reference[:1], test[1:2])[0, 0] == pytest.approx(0.2829, abs=1e-4)
    assert box_iou(reference[:1], test[1:2], 1.0)[0, 0] == pytest.approx(0.3136, abs=1e-4)
    plus_one = compare_detections(reference, test, 0.5, 0.3, FP32, pixel_offset=1.0)
    assert plus_one.passed, plus_one.failures
    assert (plus_one.n_matched, plus_one.nms_ambiguous) == (0, 5)
    # continuous areas (the default, for boxes of no particular NMS) miss the link
    continuous = compare_detections(reference, test, 0.5, 0.3, FP32)
    assert continuous.failures == (
        "missing 1 > 0 (firm reference detections without a test match at IoU >= 0.99)",
        "extra 1 > 0 (firm test detections without a reference match at IoU >= 0.99)")
    assert continuous.missing_examples == ((21.9711, 58.5764, 45.9616, 76.922, 0.5377, 0.4926),)


def test_an_nms_swap_is_found_with_the_nms_iou_convention():
    """The reference keeps RIVAL (which suppresses HIGH at "+1" IoU 0.308) and LOW; the test
    keeps HIGH, near-tied with RIVAL, which suppresses LOW (IoU 0.935, probs 0.053 apart)."""
    rival = [10.0, 10.0, 30.0, 16.0, 0.60264]
    high = [10.0, 13.7, 30.0, 19.7, 0.60263]
    low = [10.0, 13.9, 30.0, 19.9, 0.55]
    ious = [box_iou(np.array([rival]), np.array([high]), o)[0, 0] for o in (0.0, 1.0)]
    assert ious[0] < 0.3 - FP16.nms_iou_margin < ious[1]  # 0.237 < 0.25 < 0.308
    c = compare_detections(np.array([rival, low]), np.array([high]), 0.5, 0.3, FP16, 1.0)
    assert c.passed, c.failures
    assert (c.n_matched, c.nms_swapped, c.nms_ambiguous) == (0, 1, 3)
    continuous = compare_detections(np.array([rival, low]), np.array([high]), 0.5, 0.3, FP16)
    assert continuous.nms_swapped == 0 and continuous.failures == (
        "missing 1 > 0 (firm reference detections without a test match at IoU >= 0.8)",
        "dprob 5.3e-02 > 0.05")


class CellsRunner:
    """A stand-in network: its first pyramid level's (1, 125, 1, n) score map decodes to the
    given boxes (original-image pixels) with the given logits; every other logit is -30."""

    def __init__(self, boxes_logits, level, config):
        self.boxes_logits, self.level, self.config = boxes_logits, level, config
        self.first_shape = None

    def run(self, x):
        self.first_shape = self.first_shape or np.shape(x)
        out = np.zeros((1, 125, 1, len(self.boxes_logits)), np.float32)
        out[0, :25] = -30.0
        if np.shape(x) != self.first_shape:
            return out
        c = int(np.flatnonzero(active_templates(self.level.scale, self.config))[0])
        t, s = self.config.templates[c], self.level.scale
        cw, ch = t[2] - t[0] + 1, t[3] - t[1] + 1
        for k, ((x1, y1, x2, y2), logit) in enumerate(self.boxes_logits):
            cx, cy = k * self.config.stride + self.config.offset, self.config.offset
            out[0, [c, 25 + c, 50 + c, 75 + c, 100 + c], 0, k] = (
                logit, ((x1 + x2) / 2 * s - cx) / cw, ((y1 + y2) / 2 * s - cy) / ch,
                np.log((x2 - x1) * s / cw), np.log((y2 - y1) * s / ch))
        return out


@pytest.mark.parametrize("box_a, box_b, final_a", [
    # inside the image: "+1" IoU 0.316 (> nms 0.3), continuous 0.284
    ([10, 10, 30, 24], [10, 17.8, 30, 31.8], [10, 10, 30, 24]),
    # across its left border: IoU 0.754 as the NMS saw them, 0.286 once clipped
    ([-40, 10, 5, 24], [-40, 10, 20, 24], [0, 10, 5, 24]),
], ids=["plus-one-iou", "clipped-at-the-border"])
def test_compare_runner_measures_an_nms_flip_as_the_nms_did(box_a, box_b, final_a):
    """Two boxes tied to 1e-6 (maps within 1e-6): the reference keeps A, which suppresses B;
    the test keeps B, which suppresses A. Measured on the final boxes in continuous areas,
    the link between them fell below nms_thresh and the run FAILED."""
    config, (height, width) = DetectorConfig(), (48, 64)
    level = plan_pyramid(height, width, config)[0]
    reference = CellsRunner([(box_a, 1.0), (box_b, 0.999999)], level, config)
    test = CellsRunner([(box_a, 0.999999), (box_b, 1.0)], level, config)
    case = ReferenceCase(reference, config, height, width)
    assert np.array_equal(case.detections,
                          postprocess_levels(case.maps, case.levels, (height, width), config))
    np.testing.assert_allclose(case.detections[:, :4], [final_a], atol=1e-4)
    r = compare_runner(case, test, config, height, width, "fp32")
    assert r.passed, r.failures
    d = r.detections
    assert (d.n_ref, d.n_test, d.n_matched, d.nms_ambiguous) == (1, 1, 0, 2)


# ---------------------------------------------------------------------------------------------
# Interrupts
# ---------------------------------------------------------------------------------------------

# tf-parity whose export writes a file into its temporary folder, then receives the signal
# (argv[1]); the weights are not loaded (a stand-in model).
DRIVER = textwrap.dedent('''
    import os
    import signal
    import sys
    import time

    from tinyfaces_trt.core.config import DetectorConfig
    from tinyfaces_trt.export import weights
    from tinyfaces_trt.parity import cli


    def export(model, config, backends, work, weights_path):
        (work / "fp32").mkdir()
        (work / "fp32" / "model.onnx").write_bytes(b"0" * 4096)
        print(work, file=sys.stderr, flush=True)
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        time.sleep(30)  # the signal lands here
        raise SystemExit("not interrupted")


    weights.load_model = lambda *args, **kwargs: (object(), DetectorConfig())
    cli._export_folders = export
    sys.exit(cli.main(sys.argv[2:]))
''')


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_an_interrupted_run_exits_130_and_removes_its_temporary_folder(tmp_path, signame):
    tmp, out = tmp_path / "tmp", tmp_path / "parity.json"
    tmp.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, signame, "--untrained", "--sizes", "33x47",
         "--backends", "onnxruntime", "--json", str(out)],
        env=dict(os.environ, TMPDIR=str(tmp)), capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert done.returncode == 130, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.splitlines()
    assert lines[-1] == ("tf-parity: interrupted (no report was written; the temporary export "
                         "folder was removed)")
    assert "Traceback" not in done.stderr
    work = lines[0]
    assert work.startswith(str(tmp / "tf-parity-")) and not os.path.exists(work)
    assert list(tmp.iterdir()) == [] and not out.exists()


def test_help_documents_the_interrupt_status(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("130 interrupted (Ctrl-C or SIGTERM); no --json report is written and the "
            "temporary export folder is removed") in text



def test_one_box_with_a_wrong_prob_is_no_swap_even_beside_a_near_tied_box():
    """The review of the swap rule: the same box at 0.90 and 0.60 (dprob six times the fp16
    limit) passed because the test also held a box near-tied to 0.90 beside it."""
    from tinyfaces_trt.parity.compare import TOLERANCES, compare_detections

    reference = np.array([[100, 100, 140, 140, 0.90]])
    test = np.array([[100, 100, 140, 140, 0.60], [123, 100, 163, 140, 0.88]])
    result = compare_detections(reference, test, 0.5, 0.3, TOLERANCES["fp16"].detections, 1.0)
    assert result.nms_swapped == 0 and not result.passed
    assert any(f.startswith("dprob 3.0e-01 > 0.05") for f in result.failures), result.failures


# ---------------------------------------------------------------------------------------------
# The precision a runner runs at: TF32 on ONNX Runtime's TensorRT provider
# ---------------------------------------------------------------------------------------------

def test_a_runner_is_held_to_the_precision_it_runs_at():
    """An fp32 export on ONNX Runtime's TensorRT provider runs with TF32 convolutions
    (TensorRT's default; the provider cannot turn it off), on a CUDA provider that did not take
    ``use_tf32`` "0" too: compared at the tf32 tolerances (fp16's), not fp32's."""
    from types import SimpleNamespace

    from tinyfaces_trt.parity.harness import runner_precision
    from tinyfaces_trt.runtime.backends.onnxruntime_runner import session_precision

    def reported(cuda_options=None):
        return {"CUDAExecutionProvider": cuda_options or {}}

    trt = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert session_precision(trt, reported(), fp16=False) == "tf32"
    assert session_precision(trt, reported(), fp16=True) == "fp16"
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert session_precision(cuda, reported({"use_tf32": "0"}), fp16=False) == "fp32"
    assert session_precision(cuda, reported({"use_tf32": "1"}), fp16=False) == "tf32"
    assert session_precision(["CPUExecutionProvider"], reported(), fp16=False) == "fp32"
    # parity holds an ONNX Runtime runner to what its session ran at, others to their export's
    assert runner_precision(SimpleNamespace(precision="tf32"), "onnxruntime-cuda") == "tf32"
    assert runner_precision(SimpleNamespace(precision="fp32"), "onnxruntime") == "fp32"
    assert runner_precision(object(), "tensorrt") == "fp32"  # its engine: TF32 cleared
    assert runner_precision(object(), "tensorrt-fp16") == "fp16"
    assert TOLERANCES["tf32"] == TOLERANCES["fp16"]


@pytest.mark.parametrize("started, precision", [
    (("TensorrtExecutionProvider", "CUDAExecutionProvider"), "tf32"),
    (("CUDAExecutionProvider",), "fp32")], ids=["tensorrt-provider", "cuda-provider"])
def test_onnxruntime_cuda_is_compared_at_the_precision_its_provider_runs(
        seeded, export_dir, monkeypatch, tmp_path, started, precision):
    """tf-parity's onnxruntime-cuda rows (here over ONNX Runtime's CPU provider and host
    memory: tests/helpers_ort_gpu.py, tests/host_cudart.py): an fp32 export on the TensorRT
    provider is held to the tf32 tolerances, on the CUDA provider (use_tf32 off) to fp32's; the
    fp16 export to fp16's."""
    import importlib.util

    import host_cudart

    if host_cudart.missing():
        pytest.skip(host_cudart.missing())
    import helpers_ort_gpu

    from tinyfaces_trt.core.manifest import load_export_folder
    from tinyfaces_trt.parity.harness import run_parity

    host = host_cudart.install(monkeypatch, finalizers=False)
    fake = helpers_ort_gpu.install(monkeypatch, helpers_ort_gpu.GpuListingOrt(started=started))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "tensorrt" else find_spec(name, *a))
    monkeypatch.setenv("TINYFACES_CACHE", str(tmp_path / "cache"))
    model, config = seeded
    results = run_parity(model, config, load_export_folder(export_dir),
                         ["onnxruntime-cuda", "onnxruntime-cuda-fp16"], [(33, 47)])
    assert [(r.backend, r.precision, r.status) for r in results] == [
        ("onnxruntime-cuda", precision, "passed"), ("onnxruntime-cuda-fp16", "fp16", "passed")]
    assert results[0].maps.tolerance == TOLERANCES[precision].maps
    assert results[0].detections.tolerance == TOLERANCES[precision].detections
    assert fake.sessions[0]["options"]["CUDAExecutionProvider"]["use_tf32"] == "0"
    host.release_all()
