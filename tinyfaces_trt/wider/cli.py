"""``tf-eval``: official WIDER FACE AP (easy / medium / hard) of a detections folder.

    tf-eval --gt eval_tools/ground_truth --pred results/ [--json ap.json] [--plot pr.png]

``--gt`` holds the official ``wider_face_val.mat`` and ``wider_{easy,medium,hard}_val.mat``;
``--pred`` holds ``<event>/<image>.txt`` files in the official format (``tf-detect`` writes
them). A missing prediction file counts as an image without detections, as the official
``read_pred.m`` does, with a warning on stderr; ``--strict`` makes it an error.

``--json`` and ``--plot`` may name neither a ground-truth ``.mat`` file of ``--gt``, a file or
folder under ``--pred`` (nor the file a link there points to) nor each other: such a run is
refused before any work. Each is
written whole or not at all, also when the run is interrupted.

Exit codes: 0 success, 1 a problem with the inputs (message on stderr, no traceback),
2 bad command line (also a ``--plot`` name without a suffix matplotlib writes) or an output
that would replace an input, 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from tinyfaces_trt.core.cli import (EXIT_USAGE, add_version_argument, run_interruptible,
                                    stderr_line, write_stdout)
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.core.files import (atomic_output, inputs_replaced_by, nearest_existing,
                                     removed_if_left_empty, replaced_entry, write_text_atomic)
from tinyfaces_trt.wider.records import RECORDS_FOLDER, Detectors, detectors_of
from tinyfaces_trt.wider.evaluate import (
    INDEX_FILE, SETTING_FILES, SETTINGS, MissingPredictionsError, WiderEvalResult, evaluate_folder)


PROG = "tf-eval"


class PlotUnavailableError(TinyFacesError):
    """``--plot`` needs matplotlib, which is not installed."""


class OutputReplacesInputError(TinyFacesError):
    """``--json`` or ``--plot`` would replace an input of the evaluation or the other output
    (a usage error)."""


class PlotNameError(TinyFacesError):
    """``--plot`` names no image format matplotlib writes: no suffix, or an unknown one (a
    usage error)."""


EPILOG = """\
examples:
  tf-detect WIDER_val/images --model export/ --wider-dir pred/ --prob-thresh 0.03 --pyramid fixed
  tf-eval --gt eval_tools/ground_truth --pred pred/
  tf-eval --gt eval_tools/ground_truth --pred pred/ --json ap.json --plot pr.png

A ground-truth image without a prediction file counts as an image without detections
(as the official read_pred.m does), with a warning; --strict makes it an error.

--json and --plot may not name a ground-truth .mat file of --gt, a file or folder under
--pred, nor the same file: such a run is refused before any work (exit 2). Where
tf-detect's records (<pred>/.tf-detect/) show results of several detectors, or of the
untrained network, a warning says so.

exit status: 0 success, 1 a problem with the inputs or outputs, 2 bad command line (also
a --plot name without an image suffix matplotlib writes) or an output that would replace an
input, 130 interrupted (Ctrl-C or SIGTERM)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="WIDER FACE val AP with the official protocol (eval_tools/evaluation.m: "
                    "IoU 0.5, ignored faces, 1000 score thresholds, VOC AP).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gt", required=True, type=Path, metavar="DIR",
                   help="folder with wider_face_val.mat and wider_{easy,medium,hard}_val.mat "
                        "(the official eval_tools/ground_truth)")
    p.add_argument("--pred", required=True, type=Path, metavar="DIR",
                   help="detections folder: <event>/<image>.txt in the official format "
                        "(tf-detect --wider-dir writes it)")
    p.add_argument("--json", type=Path, metavar="FILE",
                   help="write AP and PR curves to this JSON file (default: none)")
    p.add_argument("--plot", type=Path, metavar="FILE",
                   help="save the PR curves to this image; its suffix picks the format "
                        "(.png, .pdf, .svg, ...), a name without one is refused (exit 2; "
                        "needs matplotlib; default: none)")
    p.add_argument("--strict", action="store_true",
                   help="fail when a ground-truth image has no prediction file (default: count "
                        "it as an image without detections)")
    add_version_argument(p)
    return p


def _check_output_file(option: str, path: Path) -> None:
    """Checks, creating nothing, that ``path`` can be written: not a folder, and the nearest
    existing folder above it writable."""
    if path.is_dir():
        raise TinyFacesError(f"{option} {path} is a folder; give a file name")
    folder = nearest_existing(path.parent)
    if not folder.is_dir():
        raise TinyFacesError(f"cannot create the folder of {option} {path}: {folder} is not a "
                             f"folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TinyFacesError(f"cannot write {option} {path}: the folder {folder} is not "
                             f"writable; give a writable folder")


def _input_tree(folder: Path) -> tuple[set[Path], list[str]]:
    """The folders (resolved) and the files of the tree below ``folder``, symbolic links to
    folders followed, each folder once (a link loop ends)."""
    folders: set[Path] = set()
    files: list[str] = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = Path(os.path.realpath(root))
        if real in folders:
            dirs[:] = []
            continue
        folders.add(real)
        files += [os.path.join(root, name) for name in names]
    return folders, files


def _harm_to_inputs(path: Path, victim: str | None, folders: set[Path]) -> str | None:
    """How writing ``path`` would harm an input, or None: ``victim`` is the input file it would
    replace (:func:`inputs_replaced_by`), ``folders`` the input folders (resolved)."""
    if victim is not None and replaced_entry(Path(victim)) == replaced_entry(path):
        return "is an input file of the evaluation"
    if victim is not None:
        return f"would replace the data of {victim}, an input file of the evaluation"
    if not folders.isdisjoint(replaced_entry(path).parents):
        return "is inside an input folder of the evaluation"
    return None


def _refuse_replacing_inputs(args: argparse.Namespace) -> None:
    """Raises :class:`OutputReplacesInputError` where ``--json`` or ``--plot`` would replace a
    ground-truth file of ``--gt`` or a file under ``--pred`` (or the file a link there points
    to), would land inside ``--pred``, or where both name the same file."""
    outputs = [(option, path) for option, path in (("--json", args.json), ("--plot", args.plot))
               if path is not None]
    if not outputs:
        return
    if len(outputs) == 2 and replaced_entry(args.json) == replaced_entry(args.plot):
        raise OutputReplacesInputError(f"--json {args.json} and --plot {args.plot} are the same "
                                       f"file; give them different names")
    for input_option, folder in (("--gt", args.gt), ("--pred", args.pred)):
        # of --gt only the .mat files are read (an output beside them, as with --gt ., is fine);
        # --pred's whole tree is read
        folders, files = (set(), [str(folder / name) for name in (INDEX_FILE,
                                                                  *SETTING_FILES.values())]) \
            if input_option == "--gt" else _input_tree(folder)
        victims = inputs_replaced_by([path for _, path in outputs], files)
        for option, path in outputs:
            harm = _harm_to_inputs(path, victims.get(str(path)), folders)
            if harm is not None:
                raise OutputReplacesInputError(f"{option} {path} {harm} ({input_option} "
                                               f"{folder}); choose another {option}")


def _check_paths(args: argparse.Namespace) -> None:
    """Input folders and output files, checked before the (long) evaluation; creates nothing."""
    for option, folder in (("--gt", args.gt), ("--pred", args.pred)):
        if folder.is_file():
            raise TinyFacesError(f"{option} {folder} is a file; pass the folder that holds it "
                                 f"({folder.parent})")
    _refuse_replacing_inputs(args)
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None:
            _check_output_file(option, path)
    if args.plot is not None:
        plot_format(args.plot)


def format_table(result: WiderEvalResult) -> str:
    """The AP table printed by ``tf-eval``."""
    lines = [f"{'setting':<8} {'AP':>7} {'faces':>7}"]
    for name, r in result.settings.items():
        ap = "n/a" if math.isnan(r.ap) else f"{r.ap:.4f}"
        lines.append(f"{name:<8} {ap:>7} {r.num_faces:>7}")
    return "\n".join(lines)


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailableError(
            "--plot needs matplotlib: pip install 'tinyfaces-trt[plot]'") from None


def plot_format(path: Path) -> str:
    """The image format ``path`` is saved in: its suffix, lower case, one that matplotlib
    writes (a name without a suffix is refused rather than guessed).

    Raises:
        PlotUnavailableError: matplotlib is not installed.
        PlotNameError: no suffix, or one matplotlib does not write (the message lists those
            it does).
    """
    _require_matplotlib()
    from matplotlib.figure import Figure

    formats = Figure().canvas.get_supported_filetypes()
    choices = ", ".join("." + f for f in sorted(formats))
    suffix = path.suffix.lower().lstrip(".")
    if not suffix:
        raise PlotNameError(f"--plot {path}: the name has no image suffix to choose the "
                            f"format; end it with one of {choices}")
    if suffix not in formats:
        raise PlotNameError(f"--plot {path}: unknown image format {suffix!r}; end the name "
                            f"with one of {choices}")
    return suffix


def save_pr_plot(result: WiderEvalResult, path: Path) -> None:
    """One precision/recall panel per setting, AP in the legend (like ``wider_plot.m``);
    the format is ``path``'s suffix (:func:`plot_format`), never the temporary name's."""
    fmt = plot_format(path)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(result.settings), figsize=(5 * len(result.settings), 5),
                             squeeze=False)
    for ax, (name, r) in zip(axes[0], result.settings.items()):
        ax.plot(r.recall, r.precision, linewidth=2, label=f"AP {r.ap:.4f}")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="Recall", ylabel="Precision", title=name)
        ax.grid(True)
        ax.legend(loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=100, format=fmt)
    except (ValueError, RuntimeError, OSError) as exc:  # an unknown format; a format's tool
        raise TinyFacesError(f"cannot save the plot {path}: {exc}") from exc  # missing (xelatex)
    finally:
        plt.close(fig)


def detector_warnings(detectors: Detectors, pred_dir: Path) -> list[str]:
    """What tf-eval says of the detectors that made the results (tf-detect's records in
    ``<pred_dir>/.tf-detect/``): several of them in one AP, or the untrained network."""
    lines = []
    if len(detectors.counts) > 1:
        made = "; ".join(f"{count} by {name}" for name, count in detectors.counts)
        lines.append(f"the results in {pred_dir} were made by {len(detectors.counts)} different "
                     f"detectors (their records in {pred_dir / RECORDS_FOLDER}): {made}; an AP "
                     "of one detector needs results of that detector only")
    if detectors.untrained:
        lines.append(f"{detectors.untrained} result file(s) in {pred_dir} were made by the "
                     "UNTRAINED network (seeded random weights): their AP is meaningless")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    return run_interruptible(PROG, lambda: _run(args),
                             interrupted="interrupted (no partial --json/--plot file was left)")


def _run(args: argparse.Namespace) -> int:
    """The evaluation of parsed arguments; returns the exit code."""
    try:
        _check_paths(args)  # fail before the evaluation, not after
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = evaluate_folder(args.gt, args.pred, SETTINGS,
                                     on_missing="error" if args.strict else "ignore")
        for w in caught:
            stderr_line(f"tf-eval: warning: {w.message}")
        detectors = detectors_of(args.pred)
        for line in detector_warnings(detectors, args.pred):
            stderr_line(f"tf-eval: warning: {line}")
        if result.missing:
            stderr_line(f"tf-eval: warning: {len(result.missing)} of {result.num_images} "
                        "images have no prediction file and count as images without "
                        f"detections (first: {result.missing[0]})")
        write_stdout(format_table(result) + "\n")
        outputs = [path.parent for path in (args.json, args.plot) if path is not None]
        with removed_if_left_empty(*outputs):  # created here, removed if nothing lands
            if args.plot is not None:  # first: the likelier to fail (a format's own tools)
                save_pr_plot(result, args.plot)
            if args.json is not None:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                payload = result.to_dict()
                payload.update(gt_dir=str(args.gt), pred_dir=str(args.pred),
                               detectors=[{"detector": name, "files": count}
                                          for name, count in detectors.counts])
                write_text_atomic(args.json, json.dumps(payload, indent=1) + "\n")
    except MissingPredictionsError as exc:  # only with --strict
        stderr_line(f"tf-eval: error: {len(exc.missing)} of {exc.total} prediction files are "
                    f"missing (--strict refuses that), e.g. {exc.missing[0]}; write one for "
                    "every ground-truth image (box count 0 for an image without detections) "
                    "or drop --strict to count them as images without detections")
        return 1
    except (OutputReplacesInputError, PlotNameError) as exc:  # bad command lines
        stderr_line(f"tf-eval: error: {exc}")
        return EXIT_USAGE
    except TinyFacesError as exc:
        stderr_line(f"tf-eval: error: {exc}")
        return 1
    except OSError as exc:  # writing --json / --plot
        stderr_line(f"tf-eval: error: cannot write output: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
