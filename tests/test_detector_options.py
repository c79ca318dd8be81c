"""The detector options are one definition (tinyfaces_trt.detector_options): tf-detect,
tf-anonymize and tf-serve accept the same flags, refuse the same combinations with the same
message (exit 2), and turn the same flags into the same detector; create_detector refuses
what a backend would ignore, and warns about more threads than cores."""

from __future__ import annotations

import dataclasses
import os
import warnings

import pytest

from tinyfaces_trt.anonymize import cli as anonymize_cli
from tinyfaces_trt.cli import detect as detect_cli
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.detectors import create_detector, spec_from_arguments
from tinyfaces_trt.scaleout import cli_serve

# each CLI's main, and the arguments it needs besides the detector's
CLIS = {
    "tf-detect": (detect_cli.main, detect_cli.build_parser, ["photo.jpg"]),
    "tf-anonymize": (anonymize_cli.main, anonymize_cli.build_parser, ["clip.mp4", "--out", "out"]),
    "tf-serve": (cli_serve.main, cli_serve.build_parser, []),
}


@pytest.mark.parametrize("cli", sorted(CLIS))
@pytest.mark.parametrize("argv, message", [
    (["--backend", "torch", "--threads", "2"], "--providers/--threads are onnxruntime options"),
    (["--backend", "tensorrt", "--providers", "cpu"],
     "--providers/--threads are onnxruntime options, of the onnxruntime backend (--providers "
     "also of onnxruntime-cuda), not tensorrt"),
    (["--backend", "torch", "--fp16"],
     "--fp16 applies to the onnxruntime, onnxruntime-cuda, tensorrt and torch-cuda backends, "
     "not torch (the float32 reference)"),
    (["--backend", "torch-cuda", "--model", "m"],
     "--backend torch-cuda runs a checkpoint (--weights F) directly"),
    (["--min-face", "50", "--max-face", "20"], "--min-face 50 is larger than --max-face 20"),
    (["--providers", "cdua"], "unknown ONNX Runtime provider(s) ['cdua']"),
    (["--model", "a", "--weights", "b"], "argument --weights: not allowed with argument --model"),
    (["--prob-thresh", "1.5"], "--prob-thresh"),
    (["--torch-mode", "aoti"], "--torch-mode applies to the torch-cuda backend, not onnxruntime"),
    (["--backend", "torch-cuda", "--torch-mode", "fast"], "argument --torch-mode: invalid choice"),
    (["--backend", "onnxruntime-cuda", "--threads", "2"],
     "--threads applies to the onnxruntime backend (its CPU provider), not onnxruntime-cuda"),
    (["--backend", "onnxruntime-cuda", "--providers", "cpu"],
     "--providers: the onnxruntime-cuda backend runs ONNX Runtime's CUDA provider: its providers "
     "are 'cuda' (that one alone) or 'tensorrt,cuda' (the default), got 'cpu'"),
    (["--backend", "onnxruntime-cuda", "--providers", "cuda,tensorrt"], "got 'cuda,tensorrt'"),
    (["--pyramid", "octaves"], "argument --pyramid: invalid choice: 'octaves' (choose from "),
])
def test_every_cli_refuses_the_same_combinations(cli, argv, message, capsys):
    main, _, needed = CLIS[cli]
    with pytest.raises(SystemExit) as stop:
        main(needed + argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_every_cli_turns_the_same_flags_into_the_same_detector():
    flags = ["--prob-thresh", "0.7", "--nms-thresh", "0.4", "--min-face", "12",
             "--max-face", "300", "--pyramid", "fixed", "--no-fp16", "--providers", "cpu",
             "--threads", "1"]
    specs = {}
    for name, (_, build_parser, needed) in CLIS.items():
        args = build_parser().parse_args(needed + flags)
        specs[name] = spec_from_arguments(args)
    # tf-anonymize takes the boxes uncut by the image border (its masks enlarge them)
    anonymize = specs.pop("tf-anonymize")
    assert len(set(specs.values())) == 1, specs
    spec = specs["tf-serve"]
    assert spec.backend == "onnxruntime" and spec.providers == ("CPUExecutionProvider",) and spec.threads == 1
    assert dict(spec.config_overrides) == {"score": "prob", "prob_thresh": 0.7, "nms_thresh": 0.4,
                                           "min_face": 12.0, "max_face": 300.0, "pyramid": "fixed"}
    assert anonymize == dataclasses.replace(
        spec, config_overrides=spec.config_overrides + (("clip_boxes", False),))


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_pyramid_reaches_the_detector_config_of_every_cli(cli, export_dir):
    """--pyramid fixed gives the detector the port's fixed exponents; without it the model's
    own rule (adaptive) stays."""
    _, build_parser, needed = CLIS[cli]
    for flags, rule in ((["--pyramid", "fixed"], "fixed"), (["--pyramid", "adaptive"], "adaptive"),
                        ([], "adaptive")):
        args = build_parser().parse_args(needed + ["--model", str(export_dir), *flags])
        with spec_from_arguments(args).create() as detector:
            assert detector.config.pyramid == rule, flags
            assert [lv.exponent for lv in detector.plan(480, 640)] == (
                [-2.0, -1.0, 0.0, 1.0] if rule == "fixed" else [-3.0, -2.0, -1.0, 0.0, 0.5, 1.0])


def test_torch_mode_reaches_the_detector_spec_of_every_cli():
    for name, (_, build_parser, needed) in CLIS.items():
        args = build_parser().parse_args(needed + ["--backend", "torch-cuda", "--weights", "w.pth",
                                                   "--torch-mode", "aoti"])
        spec = spec_from_arguments(args)
        assert (spec.backend, spec.torch_mode) == ("torch-cuda", "aoti"), name
        default = spec_from_arguments(build_parser().parse_args(
            needed + ["--backend", "torch-cuda", "--weights", "w.pth"]))
        assert default.torch_mode is None, name  # create_detector's default: fused
        auto = spec_from_arguments(build_parser().parse_args(
            needed + ["--backend", "auto", "--torch-mode", "aoti"]))
        # kept only where auto picks torch-cuda (a GPU machine), dropped for the others
        assert auto.torch_mode == ("aoti" if auto.backend == "torch-cuda" else None), name


def test_help_describes_the_options_once_for_all_clis():
    helps = {name: " ".join(build().format_help().split()) for name, (_, build, _) in CLIS.items()}
    for text in helps.values():
        assert "--backend {onnxruntime,onnxruntime-cuda,tensorrt,torch,torch-cuda,auto}" in text
        assert "look only for faces at least PIXELS long" in text
        assert "--torch-mode MODE how torch-cuda prepares each input shape" in text
        assert ("--pyramid {adaptive,fixed} pyramid rule: adaptive (the authors' demo: levels "
                "chosen from the image and template sizes, from where the largest template "
                "covers the image up to 2x) or fixed (the port's and both references' WIDER "
                "protocol: the short side times 2^-2, 2^-1, 1, 2; use it for WIDER results). "
                "fixed goes no lower than 1/4") in text
        assert "the face size limits prune the levels of both (default: the model's, adaptive)" \
            in text
    assert "GPU backends get one GPU per replica" in helps["tf-serve"]
    assert "(default: --cpus-per-replica, per replica)" in helps["tf-serve"]


# ------------------------------------------------ create_detector: what a backend does not use
TORCH_REFUSALS = [
    ({"fp16": True}, "fp16=True applies to the onnxruntime, onnxruntime-cuda, tensorrt and "
                     "torch-cuda backends, not torch (the float32 reference)"),
    ({"gpu_stages": True}, "gpu_stages=True applies to the onnxruntime-cuda, tensorrt and "
                           "torch-cuda backends, not torch (host stages)"),
    ({"providers": "cuda"}, "providers/threads are onnxruntime options, of the onnxruntime "
                            "backend (providers also of onnxruntime-cuda), not torch (torch's "
                            "CPU threads are process-wide: torch.set_num_threads)"),
    ({"threads": 1}, "providers/threads are onnxruntime options, of the onnxruntime backend "
                     "(providers also of onnxruntime-cuda), not torch (torch's CPU threads are "
                     "process-wide: torch.set_num_threads)"),
]


def test_torch_backend_refuses_the_options_it_would_ignore():
    for option, message in TORCH_REFUSALS:
        # refused before any work: the checkpoint is not even looked for
        with pytest.raises(TinyFacesError) as refused:
            create_detector("torch", weights="no_such_checkpoint.pth", **option)
        assert str(refused.value) == message, option
    pytest.importorskip("torch")
    detector = create_detector("torch", fp16=False, gpu_stages=False)  # what it honours
    try:
        assert detector.identity.precision == "fp32"
        assert type(detector.preprocessor).__name__ == "HostPreprocessor"
    finally:
        detector.close()


def test_more_threads_than_cores_is_accepted_with_one_warning(export_dir):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with pytest.warns(RuntimeWarning) as caught:
        detector = create_detector(model_dir=export_dir, threads=cores + 1)
    detector.close()
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert messages == [f"threads={cores + 1} is more than the {cores} core(s) this process may "
                        f"use (os.cpu_count(): {os.cpu_count()}); ONNX Runtime's threads will "
                        f"wait for one another and each detect runs slower; threads={cores} or "
                        f"None (all cores) is faster"]
    assert caught[0].filename == __file__  # points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        create_detector(model_dir=export_dir, threads=cores).close()
