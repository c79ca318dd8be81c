"""The ``tf-export`` command line: arguments, messages, exit codes, end to end on a checkpoint.

The command runs in this process (``main(argv)``'s return value is the exit status, capfd
holds what it printed) on the session's seeded checkpoint (tests/conftest.py); only the case
that takes torch away from the interpreter starts a process of its own."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import onnx
import pytest

from tinyfaces_trt.export.cli_export import (EXIT_ERROR, EXIT_NO_TENSORRT, EXIT_OK, EXIT_USAGE, main,
                                             parse_image_size, parse_shape)
from tinyfaces_trt.export.trt_build import tensorrt_version
from tinyfaces_trt.core.manifest import load_export_folder

pytest.importorskip("onnxruntime")
HAS_TRT = tensorrt_version() is not None


def _run_cli(capfd, *args: str) -> subprocess.CompletedProcess:
    """tf-export run in this process: its exit status and what it wrote to stdout and stderr
    (file descriptors included, as a process of its own would show them)."""
    capfd.readouterr()  # what came before is not the command's
    code = main(list(args))
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(["tf-export", *args], code, out, err)


def test_help_lists_exit_codes(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "Exit codes:" in text
    for code in ("0  success", "1  error", "2  invalid command line", "3  --engine given but no usable TensorRT (>= 10)"):
        assert code in text
    assert "--image-size WxH" in text and "--timing-cache F" in text


@pytest.mark.parametrize("argv, message", [
    ([], "--weights is required (or --untrained"),
    (["--weights", "w.pth", "--untrained"], "--weights and --untrained exclude each other"),
    (["--untrained", "--min-shape", "1x3x8x8"], "give all three"),
    (["--untrained", "--image-size", "640x480", "--min-shape", "1x3x8x8", "--opt-shape", "1x3x8x8",
      "--max-shape", "1x3x8x8"], "either --image-size or --min/--opt/--max-shape"),
    (["--untrained", "--image-size", "640"], "WIDTHxHEIGHT"),
    (["--untrained", "--min-shape", "8x8"], "NxCxHEIGHTxWIDTH"),
    (["--untrained", "--max-batch", "0"], "argument --max-batch: 0 must be >= 1"),
    (["--untrained", "--max-batch", "4", "--min-shape", "1x3x8x8", "--opt-shape", "4x3x8x8",
      "--max-shape", "4x3x8x8"], "--max-batch applies to --image-size; with --min/--opt/--max-shape"),
    (["--untrained", "--max-batch", "8"], "--max-batch 8 needs --image-size: a batch is images of one "
     "size (video frames, a camera's); for batches of every image up to 1920x1920 (the default "
     "profile) the engine would need 8 times the memory of the largest pyramid level"),
    (["--untrained", "--workspace", "0"], "argument --workspace: 0.0 must be > 0 and finite"),
    (["--untrained", "--engine", "--no-engine"], "not allowed with argument"),
    (["--untrained", "--seed", "-3"], "argument --seed: -3 must be >= 0"),
    (["--weights", "w.pth", "--seed", "3"], "--seed applies to --untrained weights only"),
    (["--untrained", "--opset", "13"], "argument --opset: 13 must be between 15 and 28, the opsets "
     "torch's exporter converts this network to (default 17)"),
    (["--untrained", "--opset", "30"], "argument --opset: 30 must be between 15 and 28"),
])
def test_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_invalid_profile_is_a_clear_error(capsys, tmp_path):
    argv = ["--untrained", "--out", str(tmp_path), "--min-shape", "1x3x64x64", "--opt-shape", "1x3x32x32",
            "--max-shape", "image:1x3x128x128"]
    assert main(argv) == EXIT_ERROR
    assert "min <= opt <= max" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_unusable_out_folder_fails_before_loading_weights(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["--untrained", "--out", str(blocker / "export")]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "Traceback" not in err and "loading" not in err
    assert f"cannot create --out {blocker / 'export'}: {blocker} is a file, not a folder" in err
    assert main(["--untrained", "--out", str(blocker)]) == EXIT_ERROR
    assert f"--out {blocker} exists and is not a folder" in capsys.readouterr().err


def test_a_write_refused_in_the_staging_folder_names_the_export_folder(capsys, tmp_path,
                                                                       monkeypatch):
    """`--out /proc/nope` said "[Errno 2] No such file or directory: '/proc/.tf-tmp-2545...
    -export-yarppiv3'": the hidden staging name, which the user never gave."""
    import errno

    from tinyfaces_trt.export import export_pipeline

    out = tmp_path / "export"
    for name, said in ((".tf-tmp-25456.0a7c9cdf-export-yarppiv3", "No such file or directory"),
                       ("model.onnx", "[Errno 2] No such file or directory: '{}'")):
        refused = tmp_path / name

        def export_model(*args, **kwargs):
            raise OSError(errno.ENOENT, "No such file or directory", str(refused))

        monkeypatch.setattr(export_pipeline, "export_model", export_model)
        assert main(["--untrained", "--depth", "50", "--out", str(out)]) == EXIT_ERROR
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"tf-export: error: cannot write the export folder {out}: {said.format(refused)}")


def test_a_model_written_with_another_opset_is_an_error_and_the_folder_unchanged(tmp_path, capsys,
                                                                                  monkeypatch,
                                                                                  checkpoint):
    """torch's exporter wrote opset 18 for --opset 13 and the manifest said 13: whatever
    writes another opset than the requested one fails the export, one line, exit 1. (The
    session's checkpoint: loading it costs less than building the --untrained network.)"""
    import torch

    from tinyfaces_trt.export import export_pipeline
    from tinyfaces_trt.export.onnx_export import torch_to_onnx

    torch.manual_seed(0)
    proto18 = torch_to_onnx(torch.nn.Conv2d(3, 125, 3, stride=8).eval(), opset=18)
    monkeypatch.setattr(export_pipeline, "torch_to_onnx", lambda *a, **k: proto18)
    out = tmp_path / "exp"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["--weights", str(checkpoint), "--out", str(out), "--opset", "17",
                 "--no-verify"]) == EXIT_ERROR
    captured = capsys.readouterr()
    assert captured.err.splitlines()[-1] == (f"tf-export: error: {out.absolute() / 'model.onnx'} was "
                                             f"written with ONNX opset 18, not the requested 17; "
                                             f"nothing exported")
    assert "Traceback" not in captured.err and captured.out == ""
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]  # no staging folder left
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_argument_parsers():
    assert parse_image_size("1920x1080") == (1920, 1080)  # WxH, named fields
    assert parse_image_size("1920x1080").height == 1080
    assert parse_shape("image:1x3x480x640") == (1, 3, 480, 640)
    assert parse_shape("1x3x5x7") == (1, 3, 5, 7)


def test_without_the_export_extra_one_line_and_exit_1(tmp_path):
    """The base install has the tf-export command but not torch/onnx: --help works, a run
    says what to install (it was a ModuleNotFoundError traceback)."""
    code = ("import sys; sys.modules['torch'] = None; "
            "from tinyfaces_trt.export.cli_export import main; sys.exit(main(sys.argv[1:]))")
    helped = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True,
                            text=True, timeout=60)
    assert helped.returncode == 0 and "--opset OPSET" in helped.stdout
    out = tmp_path / "exp"
    ran = subprocess.run([sys.executable, "-c", code, "--untrained", "--out", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == EXIT_ERROR and "Traceback" not in ran.stderr
    assert ran.stderr.strip().splitlines()[-1].startswith("tf-export: error: tf-export needs "
                                                         "torch, which is not installed")
    assert ran.stderr.rstrip().endswith("pip install 'tinyfaces-trt[export]'")
    assert not out.exists()


@pytest.mark.parametrize("content, message", [
    (None, "weights file not found"),
    (b"this is not a checkpoint", "not a readable PyTorch checkpoint"),
])
def test_bad_weights_exit_1_without_traceback(tmp_path, capfd, content, message):
    weights = tmp_path / "w.pth"
    if content is not None:
        weights.write_bytes(content)
    result = _run_cli(capfd, "--weights", str(weights), "--out", str(tmp_path / "out"))
    assert result.returncode == EXIT_ERROR
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_variant_override_of_a_pytorch_checkpoint_warns_on_stderr(checkpoint, tmp_path, capsys,
                                                                   monkeypatch):
    from tinyfaces_trt.core.errors import TinyFacesError
    from tinyfaces_trt.export import export_pipeline

    def stop(*args, **kwargs):  # stop right after the weights are loaded (no ONNX export)
        raise TinyFacesError("stopped by the test")

    monkeypatch.setattr(export_pipeline, "export_model", stop)
    code = main(["--weights", str(checkpoint), "--variant", "matconvnet",
                 "--out", str(tmp_path / "out")])
    assert code == EXIT_ERROR
    err = capsys.readouterr().err.splitlines()
    (warning,) = [line for line in err if "WARNING" in line]
    assert warning.startswith(f"tf-export: WARNING: loading the PyTorch checkpoint {checkpoint} "
                              f"as variant 'matconvnet': this changes the input normalisation")
    assert "right only for a checkpoint trained that way" in warning
    assert err[-1] == "tf-export: error: stopped by the test"
    main(["--weights", str(checkpoint), "--out", str(tmp_path / "out")])
    assert "WARNING" not in capsys.readouterr().err  # the checkpoint's own variant: no warning


@pytest.mark.skipif(HAS_TRT, reason="checks the TensorRT-missing path")
def test_engine_without_tensorrt_exits_3_after_writing_onnx(checkpoint, tmp_path, capfd,
                                                           fast_export):
    """fast_export: the checkpoint's graph is the shared export's; the rest of the export runs."""
    out = tmp_path / "exp"
    result = _run_cli(capfd, "--weights", str(checkpoint), "--out", str(out), "--fp16", "--engine",
                      "--image-size", "91x67", "--no-verify")
    assert result.returncode == EXIT_NO_TENSORRT, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tf-export: error: NVIDIA TensorRT is not installed: wrote ONNX only; build the "
                           "engine on a machine with "
                           "TensorRT >= 10")
    assert (f"trtexec --onnx={out / 'model_fp16.onnx'} --minShapes=image:1x3x34x46 "
            f"--optShapes=image:1x3x134x182 --maxShapes=image:1x3x134x182 --stronglyTyped "
            f"--memPoolSize=workspace:4096M --saveEngine={out / 'model_fp16.engine'}") in last
    folder = load_export_folder(out)  # complete folder despite the exit code
    assert folder.onnx_fp16 is not None and folder.engine_fp16 is None
    manifest = folder.manifest
    assert manifest["untrained"] is False
    assert manifest["weights"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert manifest["weights"]["path"] == str(checkpoint.resolve())
    # progress on stderr with timings, only the manifest path on stdout
    assert "tf-export: exporting fp32 ONNX (opset 17): done in" in result.stderr
    assert result.stdout == ""


@pytest.mark.skipif(HAS_TRT, reason="checks the TensorRT-missing path")
def test_fp16_without_tensorrt_exits_0(checkpoint, tmp_path, capfd):
    """The whole export, torch's exporter included (the only export of the network at an opset
    other than the default 17, the shared export's)."""
    out = tmp_path / "exp"
    result = _run_cli(capfd, "--weights", str(checkpoint), "--out", str(out), "--fp16", "--image-size", "91x67",
                      "--opset", "18", "--no-verify", "--max-batch", "4")
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout.strip() == str(out / "manifest.json")
    assert "NVIDIA TensorRT is not installed: wrote ONNX only" in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["opset"] == 18
    for name in ("model.onnx", "model_fp16.onnx"):  # the opset really written, in both files
        proto = onnx.load(str(out / name), load_external_data=False)
        assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    assert "tf-export: wrote model.onnx: ONNX opset 18 (read back from the file)" in result.stderr
    assert manifest["files"] == {"onnx_fp32": "model.onnx", "onnx_fp16": "model_fp16.onnx"}
    # batches of 1 to 4 images, tuned for 4
    assert manifest["profile"] == {"min": [1, 3, 34, 46], "opt": [4, 3, 134, 182], "max": [4, 3, 134, 182]}
    assert "--optShapes=image:4x3x134x182 --maxShapes=image:4x3x134x182 --stronglyTyped" in result.stderr
