"""tf-parity: an interrupted run (Ctrl-C, SIGTERM), and matched pairs of two different boxes
left by an NMS near-tie (:func:`~tinyfaces_trt.parity.compare.nms_swapped`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tinyfaces_trt.parity.cli import main
from tinyfaces_trt.parity.compare import TOLERANCES, compare_detections
from tinyfaces_trt.parity.harness import ParityResult
from tinyfaces_trt.parity.report import results_to_json

FP16 = TOLERANCES["fp16"].detections

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

