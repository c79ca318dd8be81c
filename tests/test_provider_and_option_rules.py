"""Two rules, each in one function that every caller uses:

* how a ``providers`` value reads (``onnxruntime_runner.parse_providers``): tf-detect accepted
  ``--providers CUDA`` and ``"cpu, cuda"`` and ran them on the GPU, but ``spec_uses_gpu`` said
  False (``--ray`` actors and tf-serve replicas got no GPU and ran on the CPU), and
  ``resolve_providers`` refused ``"cpu,cuda"`` that ``cuda_backend_uses_tensorrt`` took;
* which options apply to which backend (``detectors.check_backend_options``): the CLI refused
  ``--threads`` with onnxruntime-cuda and ``--providers``/``--threads`` with tensorrt while
  create_detector ignored them, and its ``--fp16`` message left onnxruntime-cuda out;
  and torch-cuda's fp16 default (``detectors.runs_fp16``), which the precision record restated.
"""

from __future__ import annotations

import argparse

import pytest

from tinyfaces_trt import detector_options, detectors
from tinyfaces_trt.core.errors import ConfigError, TinyFacesError
from tinyfaces_trt.detector_options import add_detector_arguments, check_detector_arguments
from tinyfaces_trt.detector_record import precision_of
from tinyfaces_trt.detectors import DetectorSpec, create_detector, spec_from_arguments
from tinyfaces_trt.runtime.backends import cuda_backend_uses_tensorrt, onnxruntime_runner
from tinyfaces_trt.runtime.backends.onnxruntime_runner import resolve_providers
from tinyfaces_trt.scaleout.cluster import spec_uses_gpu

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"

#: --providers as typed -> (the providers read, whether they ask for a GPU, what the
#: onnxruntime-cuda backend makes of them: uses TensorRT / None where it refuses them)
SPELLINGS = {
    "cuda": ([CUDA], True, False),
    "CUDA": ([CUDA], True, False),
    " Cuda ": ([CUDA], True, False),
    "cpu, cuda": ([CPU, CUDA], True, None),
    "CUDAExecutionProvider,CPU": ([CUDA, CPU], True, False),
    "TRT, CUDA": ([TRT, CUDA], True, True),
    "tensorrt,cuda,cpu": ([TRT, CUDA, CPU], True, True),
    "auto": ("auto", True, True),
    " Auto ": ("auto", True, True),
    "cpu": ([CPU], False, None),
    "CPU": ([CPU], False, None),
    "CPUExecutionProvider": ([CPU], False, None),
}
#: What each reading opens a session with where all three providers are available.
AVAILABLE = [TRT, CUDA, CPU]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tf-x")
    add_detector_arguments(parser)
    return parser


def _cli(argv: list[str]) -> argparse.Namespace | None:
    """The parsed arguments where the CLIs' check accepts ``argv``; None where it refuses them
    (exit 2)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        check_detector_arguments(parser, args)
    except SystemExit as stop:
        assert stop.code == 2
        return None
    return args


def _session_providers(read: list[str] | str) -> list[str]:
    """The providers a session opens with: the ones read, without repeats, CPU last."""
    wanted = AVAILABLE if read == "auto" else list(dict.fromkeys(read))
    return wanted if CPU in wanted else [*wanted, CPU]


def test_parse_providers_reads_every_spelling_once():
    for text, (read, _, _) in SPELLINGS.items():
        assert onnxruntime_runner.parse_providers(text) == read, text
        assert onnxruntime_runner.parse_providers(read) == read, text  # read again: the same
        if read != "auto":  # a list of names reads as the comma-separated string
            assert onnxruntime_runner.parse_providers(text.split(",")) == read, text
    assert onnxruntime_runner.parse_providers(None) is None
    assert onnxruntime_runner.parse_providers("cpu,,cuda") == [CPU, "", CUDA]
    with pytest.raises(ConfigError, match=r"^providers must be a provider name, 'auto', a list "
                                          r"of names such as \['cuda', 'cpu'\], or None; got 3$"):
        onnxruntime_runner.parse_providers(3)


def test_every_caller_reads_a_providers_spelling_alike():
    """tf-detect's check, the spec it builds, the GPU planning of --ray and tf-serve, the
    session's providers and the onnxruntime-cuda backend read each spelling the same."""
    import onnxruntime

    known = onnxruntime.get_all_providers()
    for text, (read, gpu, uses_tensorrt) in SPELLINGS.items():
        args = _cli(["--providers", text])
        assert args is not None, f"tf-detect refused --providers {text!r}"
        spec = spec_from_arguments(args)
        assert spec.providers == (read if read == "auto" else tuple(read)), text
        assert spec_uses_gpu(spec) is gpu, text
        assert spec_uses_gpu(DetectorSpec(providers=text)) is gpu, text  # an API-made spec
        assert resolve_providers(text, AVAILABLE, known) == _session_providers(read), text
        cuda_args = _cli(["--backend", "onnxruntime-cuda", "--providers", text])
        if uses_tensorrt is None:
            assert cuda_args is None, text
            with pytest.raises(TinyFacesError, match="the onnxruntime-cuda backend runs"):
                cuda_backend_uses_tensorrt(text)
        else:
            assert cuda_args is not None, text
            assert cuda_backend_uses_tensorrt(text) is uses_tensorrt, text


def test_create_detector_runs_every_spelling_on_the_providers_the_cli_reads(monkeypatch,
                                                                           export_dir, tmp_path):
    """Through the API (create_detector -> create_runner -> OnnxRuntimeRunner): the session's
    providers are the spelling's, and the runner is on the GPU where spec_uses_gpu says so."""
    pytest.importorskip("onnxruntime")
    from helpers_ort_gpu import GpuListingOrt

    monkeypatch.setenv("TINYFACES_CACHE", str(tmp_path / "cache"))
    fake = GpuListingOrt(started=(TRT, CUDA))
    monkeypatch.setattr(onnxruntime_runner, "import_onnxruntime", lambda: fake)
    for text, (read, gpu, _) in SPELLINGS.items():
        with create_detector("onnxruntime", model_dir=export_dir, providers=text,
                             gpu_stages=False) as detector:
            assert fake.sessions[-1]["providers"] == _session_providers(read), text
            assert detector.runner.capabilities.gpu is gpu is spec_uses_gpu(
                spec_from_arguments(_cli(["--providers", text]))), text


def test_unknown_providers_is_one_function():
    assert detector_options.unknown_providers is onnxruntime_runner.unknown_providers
    assert onnxruntime_runner.unknown_providers(" CUDA, cdua ") == ["cdua"]
    assert onnxruntime_runner.unknown_providers(["TRT", "cdua"], [CPU]) == ["cdua"]


# ------------------------------------------------------------- which options apply to which backend
#: An option as create_detector and as the CLIs take it.
OPTIONS = {
    "fp16": ({"fp16": True}, ["--fp16"]),
    "torch_mode": ({"torch_mode": "aoti"}, ["--torch-mode", "aoti"]),
    "providers": ({"providers": "cuda"}, ["--providers", "cuda"]),
    "threads": ({"threads": 2}, ["--threads", "2"]),
    "model_dir": ({}, ["--model", "m"]),  # the export folder itself
}


def _ort_options(backend: str, providers: str, threads: str, why: str = "") -> str:
    return (f"{providers}/{threads} are onnxruntime options, of the onnxruntime backend "
            f"({providers} also of onnxruntime-cuda), not {backend}{why}")


TORCH_THREADS = " (torch's CPU threads are process-wide: torch.set_num_threads)"
#: (backend, option) -> (create_detector's message, the CLIs' message); the others are taken.
REFUSALS = {
    ("torch", "fp16"): (
        "fp16=True applies to the onnxruntime, onnxruntime-cuda, tensorrt and torch-cuda "
        "backends, not torch (the float32 reference)",
        "--fp16 applies to the onnxruntime, onnxruntime-cuda, tensorrt and torch-cuda backends, "
        "not torch (the float32 reference)"),
    **{(b, "torch_mode"): (f"torch_mode applies to the torch-cuda backend, not {b}",
                           f"--torch-mode applies to the torch-cuda backend, not {b}")
       for b in ("onnxruntime", "onnxruntime-cuda", "tensorrt", "torch")},
    **{(b, option): (_ort_options(b, "providers", "threads", why),
                     _ort_options(b, "--providers", "--threads", why))
       for b, why in (("tensorrt", ""), ("torch-cuda", ""), ("torch", TORCH_THREADS))
       for option in ("providers", "threads")},
    ("onnxruntime-cuda", "threads"): (
        "threads applies to the onnxruntime backend (its CPU provider), not onnxruntime-cuda",
        "--threads applies to the onnxruntime backend (its CPU provider), not onnxruntime-cuda"),
    **{(b, "model_dir"): (
        f"the {b} backend runs a checkpoint (weights=...) directly; an export folder "
        f"(model_dir=...) runs with the onnxruntime, onnxruntime-cuda or tensorrt backend",
        f"--backend {b} runs a checkpoint (--weights F) directly; an export folder (--model) "
        f"runs with --backend onnxruntime, onnxruntime-cuda or tensorrt")
       for b in ("torch", "torch-cuda")},
}


@pytest.mark.parametrize("backend", detectors.BACKENDS)
def test_the_api_and_the_clis_refuse_the_same_options_with_one_message(backend, tmp_path,
                                                                       capsys):
    """One table: an option create_detector refuses the CLIs refuse (exit 2), with the same
    message in flags; one it takes they take. Refused before any work."""
    folder, weights = tmp_path / "none", tmp_path / "no_such_checkpoint.pth"
    for option, (kwargs, flags) in OPTIONS.items():
        if option == "model_dir":
            where = {"model_dir": folder}
        elif backend in ("torch", "torch-cuda"):
            where = {"weights": weights}
        else:
            where = {"model_dir": folder}  # taken: fails at the missing folder, no export
        api_message = cli_message = None
        try:
            create_detector(backend, **where, **kwargs).close()
        except ConfigError as exc:
            api_message = str(exc)
        except TinyFacesError:
            pass  # taken: a missing file, backend or GPU later on
        parser = _parser()
        try:
            check_detector_arguments(parser, parser.parse_args(["--backend", backend, *flags]))
        except SystemExit as stop:
            assert stop.code == 2
            cli_message = capsys.readouterr().err.splitlines()[-1].removeprefix("tf-x: error: ")
        assert (api_message, cli_message) == REFUSALS.get((backend, option), (None, None)), option


def test_auto_takes_every_option_and_passes_on_what_its_pick_uses(monkeypatch):
    """--backend auto --providers cuda --threads 2 (refused by the CLIs, taken by
    create_detector): the options go to the backend auto picks where it uses them."""
    argv = ["--backend", "auto", "--providers", "cuda", "--threads", "2", "--torch-mode", "aoti"]
    args = _cli(argv)
    assert args is not None
    for picked, taken in (("onnxruntime", ((CUDA,), 2, None)), ("onnxruntime-cuda", (None,) * 3),
                          ("tensorrt", (None,) * 3), ("torch-cuda", (None, None, "aoti"))):
        monkeypatch.setattr(detectors, "resolve_backend", lambda *a, picked=picked, **k: picked)
        spec = spec_from_arguments(args)
        assert (spec.backend, (spec.providers, spec.threads, spec.torch_mode)) == (picked, taken)


def test_the_fp16_default_is_one_rule_for_the_detector_and_its_record(monkeypatch, tmp_path):
    """torch-cuda runs fp16 unless told fp16=False; the precision recorded in outputs is
    read from the same rule (detectors.FP16_BY_DEFAULT), not restated."""
    ran: list[bool] = []

    def record(*args, fp16, **kwargs):
        ran.append(fp16)
        raise TinyFacesError("stop here")

    monkeypatch.setattr(detectors, "_torch_cuda_detector", record)
    monkeypatch.setattr(detectors.folder_backends, "create_detector", record)
    cases = [("torch-cuda", {"weights": tmp_path / "w.pth"}),
             ("onnxruntime", {"model_dir": tmp_path})]
    for defaults in (("torch-cuda",), ("onnxruntime",)):
        monkeypatch.setattr(detectors, "FP16_BY_DEFAULT", defaults)
        for backend, where in cases:
            for fp16 in (None, True, False):
                ran.clear()
                with pytest.raises(TinyFacesError, match="stop here"):
                    create_detector(backend, fp16=fp16, **where)
                expected = backend in defaults if fp16 is None else fp16
                assert ran == [expected], (defaults, backend, fp16)
                assert precision_of(backend, fp16) == ("fp16" if expected else "fp32")
