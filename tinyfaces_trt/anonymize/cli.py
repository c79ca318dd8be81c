"""``tf-anonymize``: hide every face in images, folders and videos.

    tf-anonymize dashcam.mp4 --model export/ --out anonymised/
    tf-anonymize archive/ --weights checkpoint.pth --out anonymised/ --mode pixelate
    tf-anonymize clip.mov --model export/ --out check/ --mode none --draw   # review boxes only

Per input it writes the anonymised copy under ``--out`` (same relative path and format) and
``<output>.json``, the audit sidecar (every mask per frame, the model, a review list of
near-threshold frames). Videos keep their frame rate and timestamps (variable frame rate
included), resolution and rotation; what can identify people or places is left out, said in a
note (hidden by ``--quiet``): audio (``--keep-audio`` copies it), metadata tags, subtitle and
data streams (``--keep-metadata`` copies them); attachments that are not fonts are never
copied (a warning). A bad file is
reported and skipped; the others finish. An output that would replace an input file
(``--out`` holds it) is refused before any work (exit 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tinyfaces_trt.detector_options import add_detector_arguments, check_detector_arguments
from tinyfaces_trt.scaleout.options import (add_ray_arguments, check_ray_arguments, ray_address,
                                           ray_requested)
from tinyfaces_trt.core.cli import (EXIT_ERROR, EXIT_OK, EXIT_USAGE, add_version_argument, checked,
                                    fraction, is_untrained, positive_int,
                                    probability, run_interruptible, stderr_line, stdout_line,
                                    untrained_banner)
from tinyfaces_trt.core.errors import ConfigError, TinyFacesError
from tinyfaces_trt.core.files import prepare_output_dir, removed_if_left_empty
from tinyfaces_trt.media_files import LEFT_OUT_TEXT
from tinyfaces_trt.runtime.masks import (ANONYMIZE_STYLE, MAX_BLUR_STRENGTH, MAX_CELLS, MAX_SCALE,
                                         MODES, SHAPES, MaskStyle)

PROG = "tf-anonymize"
#: Said at the start of a ``--mode none`` run (and recorded in its sidecars: ``"anonymised":
#: false``): its outputs go into --out as anonymised ones do, with every face left visible.
MODE_NONE_WARNING = "--mode none: the outputs are NOT anonymised; faces stay visible"


def _non_negative_int(text: str) -> int:
    return checked(text, int, lambda v: v >= 0, "an integer", ">= 0")


def _crf(text: str) -> int:
    return checked(text, int, lambda v: 0 <= v <= 63, "an integer", "between 0 and 63")


def _style_takes(field: str) -> Callable[[Any], bool]:
    """Whether :class:`MaskStyle` takes a value as its ``field``: its checks are the mask
    limits, asked here so that a value past them is a usage error (exit 2), not a failure
    per input."""
    def takes(value: Any) -> bool:
        try:
            MaskStyle(**{field: value})
        except TinyFacesError:
            return False
        return True
    return takes


def _mask_scale(text: str) -> float:
    # below 1 the mask is smaller than the detected box: part of the face stays visible
    return checked(text, float, _style_takes("scale"), "a number",
                   f">= 1 and <= {MAX_SCALE:g} (1 = the detected box: a smaller mask "
                   f"leaves part of the face visible)")


def _blur_strength(text: str) -> float:
    return checked(text, float, _style_takes("blur_strength"), "a number",
                   f"> 0 and <= {MAX_BLUR_STRENGTH:g}")


def _cells(text: str) -> int:
    return checked(text, int, _style_takes("cells"), "an integer", f"between 1 and {MAX_CELLS}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (its ``--help`` documents every option)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=textwrap.fill(
            "Anonymise faces in images, folders and videos with the Tiny Faces detector: every "
            "face found is blurred, pixelated or filled; in videos faces are tracked and their "
            "masks held over missed frames. Writes the anonymised copies and one audit JSON "
            "per input into --out.", 88),
        epilog="""\
network source (pick one):
  --model DIR     an export folder written by tf-export
  --weights F     a checkpoint: torch and torch-cuda run it directly; the other backends
                  export it once into the cache and reuse it
  (neither)       the seeded UNTRAINED network: its masks are meaningless (plumbing only)

examples:
  tf-anonymize dashcam.mp4 --model export/ --out anonymised/
  tf-anonymize archive/ --weights checkpoint.pth --out anonymised/ --mode pixelate
  tf-anonymize clip.mov --model export/ --out check/ --mode none --draw   # review boxes only
  tf-anonymize frames/ --model export/ --out anonymised/ --ray --workers 4

video: frames are decoded ahead and encoded on threads and detected in batches; output
keeps each frame's timestamp, the resolution, rotation (display matrix), colour tags
(matrix, primaries, transfer, range; with x264, x265, VP9, AV1), sample aspect ratio,
chapters and Matroska font attachments. Left out as personal data, in one note line per
file (hidden by --quiet, not counted as a warning) and the audit JSON: audio (--keep-audio copies it), the container's, streams'
and chapters' metadata tags but a stream's language, subtitle and data streams (GPS
text, GoPro telemetry, timecode) (--keep-metadata copies them, unchanged; a timecode
track is written anew in mov, mp4). Never copied: attachments that are not fonts and a
second video track (their faces would stay visible), named in a warning with any other
stream the output container cannot hold.
Damaged packets are skipped with a warning; a frame size that changes mid-file is an
error. Default encoders: libx264 (mp4, mov, mkv,
avi, m4v), libvpx-vp9 (webm); default --crf 18 (x264), 24 (vp9); --crf only for encoders
with a constant rate factor. Output is 8-bit 4:2:0, as players expect; libx264/libx265 at
an odd width or height keep the source's format where it fits, else 4:4:4, as they cannot
encode 4:2:0 there (fewer players decode it: --codec mpeg4 keeps 4:2:0).

temporal hold: a face's mask stays --hold frames after its last detection (interpolated
between two detections of one track) and is back-filled --hold frames before its first,
so a face missed for up to --hold frames is still hidden.

--min-face/--max-face PIXELS skip pyramid levels and templates that cannot produce faces of
that size (box longer side, assuming the box regression stays within 2x of a template).
The 2x level (over half the work) produces faces up to 110 px this way, so only
--min-face above 110 removes it; faces smaller than --min-face may then be missed.

reruns: an input whose output and audit JSON exist is skipped, unless the JSON records
another input file (its size, sampled sha256 and, over 2 MiB, modification time: a card
dump's new FILE0001.MP4; JSONs of older versions record none, so their outputs are made
again once) or other mask or video options (--mode, --shape, --mask-scale, --blur-strength, --cells,
--draw, --hold, --iou, --codec, --crf, --keep-audio, --keep-metadata), another network
(--model, --weights: the weights' sha256, or the untrained one) or other detector
settings (--prob-thresh, --nms-thresh, --min-face, --max-face, --pyramid): then it is made
again with the new ones. Another --review-band alone keeps the output as it is and
rewrites only its audit JSON's review list, recomputed from the scores the JSON records
per frame ("review list updated", noted in the JSON's review_updates); where those
scores, rounded to 1e-5, cannot tell whether a detection lies within the new band, the
input is made again. A file at an output path without its audit JSON was not written by
tf-anonymize: it is left as it is and reported (exit 1) unless --overwrite. An output whose
JSON names another path but records this file (a folder moved or remounted: same size,
sha256 and, over 2 MiB, modification time) is its output: skipped or made again under its
name, not written anew as NAME_2. A file given more than once (by its real path: named
twice, linked, or in a folder also given) is anonymised once; a line counts the others.

exit status: 0 every input done (or skipped: output exists; or its review list updated),
1 some input failed or was not anonymised (each listed on stderr: an unreadable file, an
image or video of a format it does not read, a file at its output path it did not write;
the others finish), or the run could not start (an --out that is a file or cannot be
created or written, a --model or --weights that cannot be read: as tf-detect and
tf-export), 2 bad command-line arguments (options, their values and combinations) or an
--out where an output would replace an input file, 130 interrupted (Ctrl-C or SIGTERM).""",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image or video files, or folders (walked recursively)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder (created if needed; neither an input folder nor "
                             "the folder of an input file)")
    masks = parser.add_argument_group("masks")
    masks.add_argument("--mode", choices=MODES, default=ANONYMIZE_STYLE.mode,
                       help="blur (strength scaled to the face), pixelate (a fixed grid of "
                            "mean-colour cells per face), solid (black), none (boxes only, "
                            "e.g. with --draw) (default: blur)")
    masks.add_argument("--shape", choices=SHAPES, default=ANONYMIZE_STYLE.shape,
                       help="mask the whole box or its inscribed ellipse (default: box)")
    masks.add_argument("--mask-scale", type=_mask_scale, default=ANONYMIZE_STYLE.scale,
                       metavar="F",
                       help="enlarge boxes by F (1 = as detected, at most 100) about their "
                            "centre before masking (default: 1.3); a face cut by the image "
                            "border is enlarged as detected, beyond the border, then cut")
    masks.add_argument("--blur-strength", type=_blur_strength,
                       default=ANONYMIZE_STYLE.blur_strength, metavar="F",
                       help="Gaussian radius as a fraction of the face's longer side, at most "
                            "10 (default: 0.25)")
    masks.add_argument("--cells", type=_cells, default=ANONYMIZE_STYLE.cells, metavar="N",
                       help="pixelate grid, N x N cells per face, N at most 10000 (default: 5, "
                            "as Argoverse 1.1); no cell is under 2 px: a face side of S px "
                            "gets at most S // 2 cells")
    masks.add_argument("--draw", action="store_true",
                       help="draw the masked boxes with scores: green detected, orange held, "
                            "blue back-filled (debug overlay)")
    track = parser.add_argument_group("video")
    track.add_argument("--hold", type=_non_negative_int, default=5, metavar="N",
                       help="hold masks N frames after a face's last detection and back-fill "
                            "N frames before its first (default: 5; 0: detections only); up "
                            "to N + --batch + 1 frames stay decoded in memory (a 4K frame: 25 MB), "
                            "a video that would take more than half the memory available is "
                            "refused")
    track.add_argument("--iou", type=probability, default=0.3, metavar="T",
                       help="smallest IoU that continues a face track (default: 0.3)")
    track.add_argument("--batch", type=positive_int, default=4, metavar="N",
                       help="frames per detection batch (default: 4)")
    track.add_argument("--codec", metavar="NAME",
                       help="video encoder, e.g. libx264, libx265, libvpx-vp9, mpeg4 "
                            "(default: by container, see below)")
    track.add_argument("--crf", type=_crf, metavar="N",
                       help="constant rate factor, lower is better quality: 0 to 51 for x264 "
                            "and x265, 0 to 63 for VP9 and AV1 (default: by codec)")
    track.add_argument("--keep-audio", action="store_true",
                       help="copy the audio streams (default: left out: voices are personal "
                            "data)")
    track.add_argument("--keep-metadata", action="store_true",
                       help="copy the container's and streams' metadata tags (GPS location, "
                            "recording time, device make, model and serial number, comments), "
                            "chapter titles, and the subtitle and data streams (dashcam GPS "
                            "text, GoPro telemetry, timecode) (default: left out, but for what "
                            "playback needs: rotation, a stream's language)")
    add_detector_arguments(parser, title="detector (as tf-detect)")
    # boxes as the network found them, past the border: --mask-scale and --shape ellipse work
    # on the whole face (the detector's own output is cut at the border, as the reference's)
    parser.set_defaults(clip_boxes=False)
    out = parser.add_argument_group("outputs")
    out.add_argument("--review-band", type=fraction, default=0.1, metavar="B",
                     help="list frames with a detection scoring within B above the threshold "
                          "for human review in the sidecar (default: 0.1); a rerun with "
                          "another B rewrites only the sidecar's review list (see reruns)")
    out.add_argument("--overwrite", action="store_true",
                     help="replace existing outputs, also files tf-anonymize did not write "
                          "(default: skip inputs whose output exists, made of the same input "
                          "file with the same mask and video options, network and detector "
                          "settings, updating only the review list of another --review-band; "
                          "leave files without an audit JSON alone)")
    out.add_argument("-q", "--quiet", action="store_true",
                     help="no progress (a bar on a terminal, else a line per video every "
                          "30 s) or per-file lines (errors are still printed)")
    out.add_argument("-v", "--verbose", action="store_true", help="log backend details")
    add_ray_arguments(parser)
    add_version_argument(parser)
    return parser


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    check_detector_arguments(parser, args)
    if args.codec is not None:
        from tinyfaces_trt.anonymize.video import encoder_problem
        from tinyfaces_trt.anonymize.video_formats import crf_problem

        problem = encoder_problem(args.codec)
        if problem:
            parser.error(f"--codec {args.codec}: {problem}")
        problem = crf_problem(args.codec, args.crf) if args.crf is not None else None
        if problem:
            parser.error(f"--crf {args.crf}: {problem}")
    check_ray_arguments(parser, args)
    out = Path(args.out).resolve()
    for item in args.inputs:
        if Path(item).is_dir() and Path(item).resolve() == out:
            parser.error(f"--out {args.out} is also an input folder; give another folder")


def options_from(args: argparse.Namespace) -> Any:
    """The :class:`~.jobs.Options` of parsed arguments."""
    from tinyfaces_trt.anonymize.jobs import Options

    style = MaskStyle(mode=args.mode, shape=args.shape, scale=args.mask_scale,
                      blur_strength=args.blur_strength, cells=args.cells)
    return Options(style=style, draw=args.draw, hold=args.hold, iou=args.iou, batch=args.batch,
                   codec=args.codec, crf=args.crf, keep_audio=args.keep_audio,
                   keep_metadata=args.keep_metadata, review_band=args.review_band,
                   progress=not args.quiet)


def expected_detector(args: argparse.Namespace) -> Any:
    """The :class:`~tinyfaces_trt.detector_record.DetectorRecord` of the detector the
    arguments ask for (a rerun redoes outputs made by another), None with ``--overwrite``
    (nothing is compared)."""
    from tinyfaces_trt.detector_record import record_from_arguments

    return None if args.overwrite else record_from_arguments(args)


def _make_detector(args: argparse.Namespace) -> Any:
    from tinyfaces_trt.detectors import spec_from_arguments

    def progress(line: str) -> None:
        stderr_line(f"{PROG}: {line}")

    return spec_from_arguments(args, progress).create(progress)


def main(argv: Sequence[str] | None = None) -> int:
    """``tf-anonymize`` entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_arguments(parser, args)
    return run_interruptible(PROG, lambda: _run(args), verbose=args.verbose,
                             interrupted="interrupted (no partial output is left under a final name)")


def _run(args: argparse.Namespace) -> int:
    with removed_if_left_empty(args.out):
        return _run_in(args)


def _run_in(args: argparse.Namespace) -> int:
    from tinyfaces_trt.anonymize.jobs import InputOverwriteError, plan_tasks, process_file

    start = time.perf_counter()
    if args.mode == "none":
        stderr_line(f"{PROG}: warning: {MODE_NONE_WARNING}")
    try:
        options = options_from(args)
        out_dir = prepare_output_dir(args.out, f"--out {args.out}")
        expected = expected_detector(args)
        tasks, results, errors = plan_tasks(args.inputs, out_dir, args.overwrite, options,
                                            expected)
        _report_plan(tasks, results, errors, args.quiet)
        if _refuse_encoding(tasks, args):
            return EXIT_USAGE
        tasks = _update_reviews(tasks, options, results, args.quiet)
        if not tasks:
            return _summary(results, errors, start)
        if is_untrained(args.model, args.weights):
            stderr_line(untrained_banner(PROG, args.model))
        from tinyfaces_trt.detectors import resolve_backend

        # for the sidecars' audit record (as tf-detect --json: "auto" resolved)
        options = dataclasses.replace(
            options, backend=resolve_backend(args.backend, args.model, fp16=bool(args.fp16)),
            command=tuple(sys.argv))
        detector = None if ray_requested(args) else _make_detector(args)
    except InputOverwriteError as exc:
        stderr_line(f"{PROG}: error: {exc}; give another --out")
        return EXIT_USAGE
    except ConfigError as exc:  # a detector setting given (a --max-face no level can reach)
        stderr_line(f"{PROG}: error: {exc}")
        return EXIT_USAGE
    except TinyFacesError as exc:
        stderr_line(f"{PROG}: error: {exc}")
        return EXIT_ERROR
    if detector is None:
        return _run_on_ray(args, tasks, options, results, errors, start, expected)
    with detector:
        for task in tasks:
            result = process_file(detector, task, options)
            results.append(result)
            _report(result, args.quiet)
    return _summary(results, errors, start)


def _refuse_encoding(tasks: list[Any], args: argparse.Namespace) -> bool:
    """Says what keeps ``--codec`` or ``--crf`` from encoding some of the planned videos
    (:func:`~.video.encoding_problems`) and returns True, before anything is made; else
    False."""
    if args.codec is None and args.crf is None:
        return False
    from tinyfaces_trt.anonymize.video import encoding_problems

    videos = [(t.source, Path(t.output).suffix) for t in tasks
              if t.kind == "video" and not t.review]
    problems = encoding_problems(videos, args.codec, args.crf)
    for problem in problems:
        stderr_line(f"{PROG}: error: {problem}")
    return bool(problems)


def _update_reviews(tasks: list[Any], options: Any, results: list[Any], quiet: bool
                    ) -> list[Any]:
    """Rewrites the review lists of the tasks planned for that only (``task.review``:
    :func:`~.jobs.update_review`; no detector needed), their results added to ``results`` and
    reported; returns the other tasks."""
    from tinyfaces_trt.anonymize.jobs import update_review

    for task in tasks:
        if task.review:
            result = update_review(task, options, sys.argv)
            results.append(result)
            _report(result, quiet)
    return [task for task in tasks if not task.review]


def _report_plan(tasks: list[Any], skipped: list[Any], errors: list[tuple[str, str]],
                 quiet: bool) -> None:
    """The planning's errors, what folder walks left out (hidden, linked, unreadable), and
    (unless ``quiet``) its skips and redone outputs."""
    from tinyfaces_trt.anonymize.jobs import left_out_lines

    for _, message in errors:
        stderr_line(f"{PROG}: error: {message}")
    for line in left_out_lines(skipped):
        stderr_line(f"{PROG}: {line}")
    if quiet:
        return
    for result in skipped:
        if result.status != "skipped":  # left out of a folder: said above
            continue
        task = result.task
        moved = f", made of the same file (size and sha256) as {task.moved_from}" \
            if task.moved_from else ""
        stderr_line(f"{PROG}: {task.source}: skipped, {task.output} exists{moved} "
                    "(--overwrite replaces it)")
    for task in tasks:
        if task.redo:
            stderr_line(f"{PROG}: {task.source}: making {task.output} again: {task.redo}")


def _run_on_ray(args: argparse.Namespace, tasks: list[Any], options: Any, results: list[Any],
                errors: list[tuple[str, str]], start: float, expected: Any = None) -> int:
    """The same files on a Ray cluster's worker pool (``--ray``): one detector per worker,
    outputs where the single-process run writes them, failures reported per file, finished
    outputs skipped on a rerun (the planner's rule, :func:`~.jobs.rerun_verdict`: same
    options, review band and ``expected`` detector), but for tasks the planner chose to make
    again, which are made without their outputs being checked a second time."""
    from tinyfaces_trt.anonymize.jobs import Result, is_done, naming, process_file
    from tinyfaces_trt.detectors import check_detector_config, spec_from_arguments
    from tinyfaces_trt.scaleout.pool import run_tasks

    def done(task: Any, options: Any) -> bool:
        # the planner's rule (review band included); a task it planned to make again stays
        # so, its output not read (hashed) a second time: only outputs that appeared since
        # the plan are checked
        return not args.overwrite and task.redo is None and is_done(task, options, expected)

    def as_result(pooled: Any) -> Any:
        error = None if pooled.error is None else naming(pooled.task.source, pooled.error)
        return pooled.value if pooled.status == "done" else \
            Result(pooled.task, pooled.status, error=error)

    try:
        spec = spec_from_arguments(args, lambda line: stderr_line(f"{PROG}: {line}"),
                                   for_workers=True)
        check_detector_config(spec)  # --max-face 5: a usage error here, not on every worker
        # the pool's bar counts files; a worker's frame lines would break it (no terminal there)
        options = dataclasses.replace(options, progress=False)
        pooled = run_tasks(tasks, spec, process_file, options, is_done=done,
                           address=ray_address(args), workers=args.workers,
                           progress=not args.quiet, desc=PROG,
                           on_result=lambda r: _report(as_result(r), args.quiet))
    except ConfigError as exc:
        stderr_line(f"{PROG}: error: {exc}")
        return EXIT_USAGE
    except TinyFacesError as exc:
        stderr_line(f"{PROG}: error: {exc}")
        return EXIT_ERROR
    results.extend(as_result(r) for r in pooled)  # skipped ones too (outputs that appeared)
    return _summary(results, errors, start)


def _report(result: Any, quiet: bool) -> None:
    from tinyfaces_trt.anonymize.jobs import REVIEW_UPDATED

    if result.status == "failed":
        stderr_line(f"{PROG}: error: {result.error}")
        return
    if result.status == REVIEW_UPDATED:
        if not quiet:
            stdout_line(f"{result.task.source} -> {result.task.sidecar}: review list updated "
                        f"({result.task.review}), {result.review_frames} to review; "
                        f"{result.task.output} kept as it is")
        return
    for warning in result.warnings:
        stderr_line(f"{PROG}: warning: {result.task.source}: {warning}")
    if not quiet:
        for note in result.notes:
            stderr_line(f"{PROG}: {result.task.source}: {note}")
        rate = f", {result.fps:.1f} frames/s" if result.task.kind == "video" else ""
        visible = "" if getattr(result, "anonymised", True) else \
            " (NOT anonymised: --mode none)"
        stdout_line(f"{result.task.source} -> {result.task.output}: {result.frames} frame(s), "
                    f"{result.detections} detection(s), {result.held} held, {result.filled} "
                    f"back-filled, {result.review_frames} to review{rate}{visible}")


def _summary(results: list[Any], errors: list[tuple[str, str]], start: float) -> int:
    from tinyfaces_trt.anonymize.jobs import LEFT_OUT, REVIEW_UPDATED

    failed = sum(r.status == "failed" for r in results) + len(errors)
    done = sum(r.status == "done" for r in results)
    updated = sum(r.status == REVIEW_UPDATED for r in results)
    reviews = f"{updated} review list(s) updated, " if updated else ""
    warned = sum(r.status == "done" and bool(r.warnings) for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    with_warnings = f" ({warned} with warnings)" if warned else ""
    visible = sum(r.status == "done" and not getattr(r, "anonymised", True) for r in results)
    not_anonymised = f"; {visible} NOT anonymised (--mode none: faces visible)" if visible \
        else ""
    left = sum(r.status == LEFT_OUT for r in results)
    left_out = f"; {left} left out of folders ({LEFT_OUT_TEXT}: listed above)" \
        if left else ""
    stderr_line(f"{PROG}: {done} done{with_warnings}, {reviews}{skipped} skipped, {failed} "
                f"failed in {time.perf_counter() - start:.1f} s{not_anonymised}{left_out}")
    return EXIT_ERROR if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
