"""Export folders and models an anonymiser can trust (issue 10, items 2-4 and the cache):
staged exports swapped in whole, verified checksums, refused NaN weights and score maps, the
model identity in every output."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from faults import enospc, temporaries
from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import ManifestError, TinyFacesError, WeightsError
from tinyfaces_trt.core.files import remove_stale_temporaries
from tinyfaces_trt.core.manifest import MANIFEST_NAME, load_export_folder
from tinyfaces_trt.core.pyramid import PyramidLevel
from tinyfaces_trt.core.runner import RunnerBase
from tinyfaces_trt.runtime.decode import NonFiniteScoresError, decode_level
from tinyfaces_trt.runtime.pipeline import Detector

ROOT = Path(__file__).resolve().parent.parent


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ------------------------------------------------------------ item 2: no mixed folders

def test_full_disk_during_an_export_leaves_the_old_folder_untouched(old_export, seeded,
                                                                   monkeypatch, fast_export):
    export_pipeline = fast_export
    before = _snapshot(old_export)
    calls = []

    def failing_save(proto, path):
        calls.append(path)
        Path(path).write_bytes(proto.SerializeToString()[:1000])  # a truncated model ...
        raise enospc()  # ... then the disk is full

    monkeypatch.setattr(export_pipeline.onnx, "save", failing_save)
    model, config = seeded
    with pytest.raises(OSError, match="No space left"):
        export_pipeline.export_model(model, config, old_export, fp16=True, verify=False,
                                     log=lambda _: None)
    assert calls and _snapshot(old_export) == before
    assert load_export_folder(old_export).untrained  # the old folder, complete and verified
    assert temporaries(old_export.parent) == []


def test_killed_export_leaves_the_old_folder_and_the_next_run_cleans_up(old_export):
    before = _snapshot(old_export)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinyfaces_trt.export.cli_export", "--untrained", "--depth", "50",
         "--out", str(old_export), "--fp16", "--no-verify"],
        cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stderr:  # kill it once the staging folder is being written
            if "exporting fp32 ONNX" in line:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert _snapshot(old_export) == before
    assert load_export_folder(old_export).untrained
    left = temporaries(old_export.parent)
    assert left  # the killed run's staging folder (nothing can clean up after SIGKILL) ...
    assert remove_stale_temporaries(old_export.parent) == left  # ... removed by the next run
    assert temporaries(old_export.parent) == []


def test_interrupted_export_leaves_the_old_folder(old_export, seeded, monkeypatch, fast_export):
    export_pipeline = fast_export
    before = _snapshot(old_export)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_pipeline, "convert_to_fp16", interrupted)
    model, config = seeded
    with pytest.raises(KeyboardInterrupt):
        export_pipeline.export_model(model, config, old_export, fp16=True, verify=False,
                                     log=lambda _: None)
    assert _snapshot(old_export) == before and temporaries(old_export.parent) == []


@pytest.mark.parametrize("existing", [True, False])
def test_a_model_written_with_another_opset_fails_and_leaves_the_folder(old_export, seeded,
                                                                        fast_export, existing):
    """The opset read back from the written model.onnx must be the requested one (torch's
    exporter wrote opset 18 for --opset 13 while the manifest said 13)."""
    export_pipeline = fast_export  # its graph is opset 17
    out = old_export if existing else old_export.parent / "new"
    before = _snapshot(old_export)
    model, config = seeded
    with pytest.raises(TinyFacesError) as info:
        export_pipeline.export_model(model, config, out, opset=18, fp16=True, verify=False,
                                     log=lambda _: None)
    assert str(info.value) == (f"{out.absolute() / 'model.onnx'} was written with ONNX opset 17, "
                               f"not the requested 18; nothing exported")
    assert _snapshot(old_export) == before and out.exists() == existing
    assert temporaries(old_export.parent) == []


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:-100]), "is truncated or was replaced"),
    (lambda p: p.write_bytes(bytes(reversed(p.read_bytes()))), "does not match the sha256"),
])
def test_truncated_or_swapped_model_file_is_an_error_naming_it(old_export, damage, message):
    damage(old_export / "model_fp16.onnx")
    with pytest.raises(ManifestError, match=message) as info:
        load_export_folder(old_export)
    assert str(old_export / "model_fp16.onnx") in str(info.value)


def test_tf_detect_refuses_a_damaged_export(old_export, tmp_path, capsys):
    from tinyfaces_trt.cli.detect import main

    (old_export / "model.onnx").write_bytes(b"\0" * 10)
    image = tmp_path / "x.png"
    from PIL import Image
    Image.new("RGB", (32, 32)).save(image)
    assert main([str(image), "--model", str(old_export)]) == 1
    assert "model.onnx is 10 bytes but the manifest records" in capsys.readouterr().err


def test_manifest_records_sha256_and_size(export_dir):
    import hashlib

    manifest = json.loads((export_dir / MANIFEST_NAME).read_text())
    for name in manifest["files"].values():
        data = (export_dir / name).read_bytes()
        assert manifest["checksums"][name] == {"sha256": hashlib.sha256(data).hexdigest(),
                                               "bytes": len(data)}


# -------------------------------------------------------------- the export cache

def test_damaged_cache_entry_is_exported_again_and_stale_staging_removed(export_dir, checkpoint,
                                                                         seeded, tmp_path, caplog,
                                                                         fast_export, monkeypatch):
    from tinyfaces_trt import export_cache
    from tinyfaces_trt.export_cache import cached_export

    loaded = []  # the checkpoint's network, as loading it gives (the session's, not reloaded)
    monkeypatch.setattr(export_cache, "reference_model",
                        lambda *args, **kwargs: loaded.append(args[0]) or seeded)

    cache = tmp_path / "cache"
    entry = cache / export_dir.name
    shutil.copytree(export_dir, entry)
    (entry / "model.onnx").write_bytes((entry / "model.onnx").read_bytes()[:5000])
    stale = cache / ".tf-tmp-999999999-export-x"  # a killed run's staging folder (no such pid)
    stale.mkdir()
    (stale / "model.onnx").write_text("partial")
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt"):
        folder = cached_export(checkpoint, fp16=False, cache_dir=cache, progress=lambda _: None,
                               verify=False)
    assert "is damaged" in caplog.text and "exporting it again" in caplog.text
    assert loaded == [checkpoint]
    assert folder.path == entry and not stale.exists()
    assert folder.has_checksums and folder.onnx_fp16 is None  # re-exported (fp32 only)
    load_export_folder(entry)  # and it verifies


# --------------------------------------------------------------- item 3: NaN weights

def test_nan_weights_are_refused_at_load(seeded, tmp_path):
    from tinyfaces_trt.export.weights import load_weights

    state = copy.deepcopy(seeded[0].state_dict())
    state["model.conv1.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save({"model": state}, path)
    with pytest.raises(WeightsError, match=r"NaN or infinite values in model\.conv1\.weight "
                                           r"\(1 of 9408\)"):
        load_weights(path)


def test_export_check_treats_nan_as_a_failure(seeded, export_dir):
    from tinyfaces_trt.export.onnx_export import verify_against_torch

    broken = copy.deepcopy(seeded[0])
    with torch.no_grad():
        broken.model.conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(TinyFacesError, match="NaN or infinite"):
        verify_against_torch(broken, export_dir / "model.onnx", "fp32")


def _map(value: float) -> np.ndarray:
    sm = np.full((1, 125, 3, 4), -10.0, np.float32)
    sm[0, 30, 1, 2] = value
    return sm


def test_nan_score_map_is_refused_naming_the_level():
    level = PyramidLevel(2, 1.0, 2.0, 24, 32)
    with pytest.raises(NonFiniteScoresError, match=r"pyramid level 2 \(scale 2, 32x24 input\) "
                                                   r"holds 1 NaN or infinite"):
        decode_level(_map(np.nan), level, DetectorConfig())
    with pytest.raises(NonFiniteScoresError):
        decode_level(_map(np.inf), level, DetectorConfig())


class _NanRunner(RunnerBase):
    """A network whose output is NaN (as a checkpoint with NaN weights gives)."""

    def run(self, x):
        return np.full((1, 125, -(-x.shape[2] // 8), -(-x.shape[3] // 8)), np.nan, np.float32)


def test_detector_with_nan_output_fails_instead_of_finding_no_faces():
    image = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(NonFiniteScoresError, match="no detections were produced"):
        Detector(_NanRunner(), DetectorConfig()).detect(image)


# ----------------------------------------------------------- item 4: model identity

def test_untrained_detector_warns_once_and_says_so(old_export, caplog):
    from tinyfaces_trt.detectors import create_detector

    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt"):
        detector = create_detector("onnxruntime", model_dir=old_export)
        detector.detect(np.zeros((32, 32, 3), np.uint8))
        detector.detect(np.zeros((32, 32, 3), np.uint8))
    warnings = [r for r in caplog.records if "UNTRAINED" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert detector.untrained and detector.identity.untrained
    assert detector.identity.source == f"export folder {old_export}"


def test_trained_detector_identity_is_the_checkpoint_hash(export_dir, checkpoint, caplog):
    from tinyfaces_trt.detectors import create_detector
    from tinyfaces_trt.export_cache import weights_sha256

    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt"):
        detector = create_detector("onnxruntime", model_dir=export_dir)
    assert not detector.untrained and "UNTRAINED" not in caplog.text
    assert detector.identity.weights_sha256 == weights_sha256(checkpoint) \
        == hashlib.sha256(checkpoint.read_bytes()).hexdigest()


def test_torch_detector_identity(checkpoint):
    from tinyfaces_trt.detectors import torch_identity

    identity = torch_identity(checkpoint)
    assert identity.weights_sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert identity.untrained is False and identity.source == f"checkpoint {checkpoint}"
    default = torch_identity(None)
    assert default.untrained and default.weights_sha256 is None
    assert default.source.startswith("the default network (")


def test_every_output_records_the_model_identity(old_export, checkpoint, tmp_path, capsys):
    from PIL import Image

    from tinyfaces_trt.cli.detect import main
    from tinyfaces_trt.export_cache import weights_sha256

    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (90, 120, 150)).save(image)
    assert main([str(image), "--model", str(old_export), "--out", str(tmp_path / "o"),
                 "--json"]) == 0
    expected = {"weights_sha256": weights_sha256(checkpoint), "untrained": True,
                "source": f"export folder {old_export}", "variant": "pytorch", "depth": 50,
                "seed": None, "precision": "fp32"}
    assert json.loads(capsys.readouterr().out)["model"] == expected
    assert json.loads((tmp_path / "o" / "x.json").read_text())["model"] == expected
