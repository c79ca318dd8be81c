"""tf-eval's outputs never replace its inputs, and an interrupted tf-eval ends cleanly.

``--json``/``--plot`` naming a ground-truth file, a prediction file (also through a link or a
``..`` path) or each other used to replace it and exit 0; Ctrl-C or SIGTERM printed a
KeyboardInterrupt traceback and killed the process by the signal.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tinyfaces_trt.core.files import atomic_output
from tinyfaces_trt.wider import cli as cli_eval
from tinyfaces_trt.wider.format import write_detection_file

from wider_synthetic import SynthImage, write_ground_truth

ROOT = Path(__file__).resolve().parents[1]
FACES = [[10, 10, 20, 20], [100, 10, 20, 20]]
INTERRUPTED = "tf-eval: interrupted (no partial --json/--plot file was left)"


@pytest.fixture
def tree(tmp_path) -> Path:
    """``gt/`` (its easy file a link into ``store/``), ``pred/`` (one prediction file and one
    event folder links into ``store/``, and a link loop), ``predlink`` -> ``pred``, an empty
    ``out/``. Hard AP: 0.75 (3 of 4 faces found before the one false positive)."""
    gt = write_ground_truth(tmp_path / "gt", {
        "0--Parade": [SynthImage("a", FACES), SynthImage("b", FACES[:1])],
        "1--Handshaking": [SynthImage("c", FACES[:1])]})
    store = tmp_path / "store"
    store.mkdir()
    (gt / "wider_easy_val.mat").rename(store / "easy.mat")
    (gt / "wider_easy_val.mat").symlink_to(store / "easy.mat")
    event = tmp_path / "pred" / "0--Parade"
    write_detection_file(event / "a.txt", "0--Parade/a.jpg",
                         np.array([[10, 10, 29, 29, 0.9], [300, 300, 319, 319, 0.5]]))
    write_detection_file(store / "b.txt", "0--Parade/b.jpg", np.array([[10, 10, 29, 29, 0.8]]))
    (event / "b.txt").symlink_to(store / "b.txt")
    write_detection_file(store / "hs" / "c.txt", "1--Handshaking/c.jpg",
                         np.array([[10, 10, 29, 29, 0.7]]))
    (tmp_path / "pred" / "1--Handshaking").symlink_to("../store/hs", target_is_directory=True)
    (event / "loop").symlink_to("..", target_is_directory=True)
    (tmp_path / "predlink").symlink_to("pred", target_is_directory=True)
    (tmp_path / "out").mkdir()
    return tmp_path


def _snapshot(root: Path) -> dict[str, str]:
    """Every entry below ``root`` (links not followed) -> its content's hash or link target."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            out[str(path.relative_to(root))] = (
                "-> " + os.readlink(path) if path.is_symlink() else
                "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest())
    return out


@pytest.mark.parametrize("outputs, message", [
    (["--json", "gt/wider_hard_val.mat"],
     "--json gt/wider_hard_val.mat is an input file of the evaluation (--gt gt); choose "
     "another --json"),
    (["--json", "pred/0--Parade/a.txt"],
     "--json pred/0--Parade/a.txt is an input file of the evaluation (--pred pred); choose "
     "another --json"),
    (["--plot", "out/../gt/wider_face_val.mat"],
     "--plot out/../gt/wider_face_val.mat is an input file of the evaluation (--gt gt); "
     "choose another --plot"),
    (["--json", "store/easy.mat"],  # gt/wider_easy_val.mat links to it
     "--json store/easy.mat would replace the data of gt/wider_easy_val.mat, an input file of "
     "the evaluation (--gt gt); choose another --json"),
    (["--json", "store/b.txt"],  # pred/0--Parade/b.txt links to it
     "--json store/b.txt would replace the data of pred/0--Parade/b.txt, an input file of the "
     "evaluation (--pred pred); choose another --json"),
    (["--json", "store/hs/c.txt"],  # pred/1--Handshaking links to store/hs
     "--json store/hs/c.txt is an input file of the evaluation (--pred pred); choose another "
     "--json"),
    (["--plot", "store/hs/pr.png"],
     "--plot store/hs/pr.png is inside an input folder of the evaluation (--pred pred); "
     "choose another --plot"),
    (["--json", "predlink/0--Parade/ap.json"],
     "--json predlink/0--Parade/ap.json is inside an input folder of the evaluation (--pred "
     "pred); choose another --json"),
    (["--json", "pred/new/ap.json"],
     "--json pred/new/ap.json is inside an input folder of the evaluation (--pred pred); "
     "choose another --json"),
    (["--json", "out/r.svg", "--plot", "out/r.svg"],
     "--json out/r.svg and --plot out/r.svg are the same file; give them different names"),
    (["--json", "out/r.json", "--plot", "predlink/../out/r.json"],
     "--json out/r.json and --plot predlink/../out/r.json are the same file; give them "
     "different names"),
], ids=["gt-file", "prediction-file", "dotdot-path", "gt-link-target", "prediction-link-target",
        "file-in-linked-event", "new-file-in-linked-event", "linked-folder", "new-folder-in-pred", "same-file", "same-file-dotdot"])
def test_outputs_replacing_inputs_are_refused_before_any_work(tree, monkeypatch, capsys,
                                                               outputs, message):
    monkeypatch.chdir(tree)
    ran = []
    monkeypatch.setattr(cli_eval, "evaluate_folder", lambda *a, **k: ran.append(a))
    before = _snapshot(tree)
    code = cli_eval.main(["--gt", "gt", "--pred", "pred", *outputs])
    captured = capsys.readouterr()
    assert (code, captured.out, captured.err) == (2, "", f"tf-eval: error: {message}\n")
    assert ran == [] and _snapshot(tree) == before


def test_outputs_are_placed_as_the_system_resolves_them(tree, monkeypatch, capsys):
    """An output that is a link into the inputs is replaced, not followed (a rename over its
    name): the ground truth is safe. ``..`` after a link goes up from the link's target
    (pred/0--Parade/loop is pred, so pred/0--Parade/loop/../out is out/), not from the
    path's text (pred/0--Parade/out)."""
    monkeypatch.chdir(tree)
    Path("out/ap.json").symlink_to("../gt/wider_hard_val.mat")
    mat = Path("gt/wider_hard_val.mat").read_bytes()
    for output in ("out/ap.json", "pred/0--Parade/loop/../out/ap2.json"):
        assert cli_eval.main(["--gt", "gt", "--pred", "pred", "--json", output]) == 0, \
            capsys.readouterr().err
    assert sorted(os.listdir("out")) == ["ap.json", "ap2.json"]
    assert not Path("out/ap.json").is_symlink()
    assert json.loads(Path("out/ap.json").read_text())["ap"]["hard"] == 0.75
    assert Path("out/ap2.json").read_bytes() == Path("out/ap.json").read_bytes()
    assert Path("gt/wider_hard_val.mat").read_bytes() == mat


def test_outputs_beside_the_ground_truth_are_fine_but_never_over_it(tree, monkeypatch, capsys):
    """tf-eval reads four .mat files of --gt: a run from the ground truth's own folder (--gt .)
    was refused for any output there; the .mat files themselves stay refused."""
    monkeypatch.chdir(tree / "gt")
    mat = Path("wider_hard_val.mat").read_bytes()
    assert cli_eval.main(["--gt", ".", "--pred", "../pred", "--json", "results/ap.json",
                          "--plot", "pr.png"]) == 0, capsys.readouterr().err
    assert json.loads(Path("results/ap.json").read_text())["ap"]["hard"] == 0.75
    capsys.readouterr()
    assert cli_eval.main(["--gt", ".", "--pred", "../pred", "--json", "wider_hard_val.mat"]) == 2
    assert capsys.readouterr().err.strip() == (
        "tf-eval: error: --json wider_hard_val.mat is an input file of the evaluation (--gt .); "
        "choose another --json")
    assert Path("wider_hard_val.mat").read_bytes() == mat


DRIVER = textwrap.dedent('''
    import sys
    import time

    import tinyfaces_trt.wider.evaluate as evaluate
    from tinyfaces_trt.wider import cli


    def slow_setting(*args, **kwargs):
        print("evaluating", flush=True)
        time.sleep(60)


    evaluate.evaluate_setting = slow_setting
    sys.exit(cli.main(sys.argv[1:]))
''')


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_evaluation_exits_130_with_one_line(tree, sig):
    out = tree / "new" / "ap.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, "--gt", tree / "gt", "--pred", tree / "pred", "--json",
         out], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline() == "evaluating\n"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert (proc.returncode, err) == (130, INTERRUPTED + "\n")
    assert not (tree / "new").exists()


def test_an_interrupt_while_writing_leaves_no_partial_file(tree, monkeypatch, capsys):
    """The plot being written (first) is not left behind, under its name or a temporary one,
    and the JSON is not written after it."""
    def interrupted_plot(result, path):
        with atomic_output(path) as tmp:
            tmp.write_bytes(b"<svg")
            raise KeyboardInterrupt

    monkeypatch.setattr(cli_eval, "save_pr_plot", interrupted_plot)
    monkeypatch.setattr(cli_eval, "plot_format", lambda path: "svg")  # (no matplotlib needed)
    out = tree / "out"
    try:
        code = cli_eval.main(["--gt", str(tree / "gt"), "--pred", str(tree / "pred"),
                              "--json", str(out / "ap.json"), "--plot", str(out / "pr.svg")])
    except KeyboardInterrupt:  # (would end the pytest session)
        pytest.fail("the interrupt went out of main()")
    assert (code, capsys.readouterr().err.splitlines()[-1]) == (130, INTERRUPTED)
    assert os.listdir(out) == []


def test_a_plot_that_cannot_be_made_leaves_no_json(tree, monkeypatch, capsys):
    """--plot pr.pgf without xelatex: a 91-line traceback (RuntimeError), the JSON left
    written."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    def no_tex(self, *args, **kwargs):
        raise RuntimeError("'xelatex' not found; install it")

    monkeypatch.setattr(Figure, "savefig", no_tex)
    out = tree / "out"
    code = cli_eval.main(["--gt", str(tree / "gt"), "--pred", str(tree / "pred"),
                          "--json", str(out / "ap.json"), "--plot", str(out / "pr.pgf")])
    assert code == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"tf-eval: error: cannot save the plot {out / 'pr.pgf'}: 'xelatex' not found; install it")
    assert os.listdir(out) == []  # (the fixture's empty folder)


def test_results_of_several_detectors_or_the_untrained_one_are_named(tmp_path, capsys):
    """tf-detect records which detector wrote each result (pred/.tf-detect/); one AP over a
    folder mixing two detectors' results, or the untrained network's, was printed silently."""
    from tinyfaces_trt.wider.records import RECORDS_FOLDER

    gt = write_ground_truth(tmp_path / "gt", {"0--Parade": [SynthImage("a", FACES),
                                                            SynthImage("b", FACES[:1])]})
    pred = tmp_path / "pred"
    trained = {"weights_sha256": "ab" * 32, "untrained": False, "precision": "fp32"}
    for name, model, thresh in (("a", trained, 0.03), ("b", {"untrained": True, "seed": 0}, 0.5)):
        write_detection_file(pred / "0--Parade" / f"{name}.txt", f"0--Parade/{name}.jpg",
                             np.array([[10, 10, 29, 29, 0.9 if name == "a" else 0.7]]))
        record = pred / RECORDS_FOLDER / "0--Parade" / f"{name}.json"
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"model": model, "config": {"prob_thresh": thresh,
                                                                 "min_face": None}}))
    (pred / RECORDS_FOLDER / "0--Parade" / "gone.json").write_text("{}")  # its result is gone
    out = tmp_path / "ap.json"
    assert cli_eval.main(["--gt", str(gt), "--pred", str(pred), "--json", str(out)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    mine = f"weights sha256 {'ab' * 6}, precision fp32, prob_thresh 0.03"
    assert warnings == [
        f"tf-eval: warning: the results in {pred} were made by 2 different detectors (their "
        f"records in {pred / RECORDS_FOLDER}): 1 by {mine}; 1 by untrained network, seed 0, "
        "prob_thresh 0.5; an AP of one detector needs results of that detector only",
        f"tf-eval: warning: 1 result file(s) in {pred} were made by the UNTRAINED network "
        "(seeded random weights): their AP is meaningless"]
    assert json.loads(out.read_text())["detectors"] == [
        {"detector": mine, "files": 1},
        {"detector": "untrained network, seed 0, prob_thresh 0.5", "files": 1}]
    (pred / RECORDS_FOLDER / "0--Parade" / "b.json").write_text(
        json.dumps({"model": trained, "config": {"prob_thresh": 0.03}}))
    assert cli_eval.main(["--gt", str(gt), "--pred", str(pred)]) == 0
    assert "warning" not in capsys.readouterr().err  # one detector: nothing to say
