"""The public API refuses what it cannot use, with a TinyFacesError naming it, and keeps what
it was given: output files get the process's current umask, a frozen DetectorConfig cannot be
changed (its templates included), create_detector checks its options' types, and
backend="auto" with an export folder does not import torch."""

from __future__ import annotations

import io
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers_run import current_umask

import tinyfaces_trt
from tinyfaces_trt.core import files
from tinyfaces_trt.core.config import DetectorConfig, Normalization
from tinyfaces_trt.core.errors import ConfigError, ImageError, ManifestError, TinyFacesError
from tinyfaces_trt.runtime.imageio import decode_image, load_image, save_image
from tinyfaces_trt.runtime.masks import MaskStyle, apply_masks


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Sets the process's umask (as a service does after starting); the old one is restored
    after the test."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def test_outputs_follow_the_umask_set_after_import(tmp_path, umask, monkeypatch):
    """The umask was read once at import (022 here), so with 077 set later a plain open()
    made 0600 files but save_image 0644 ones: photos of faces readable by every user. 027
    tells the umask's mode from both that and mkstemp/mkdtemp's own 0600/0700. The writers
    must not set the umask either (other threads would see the change)."""
    umask(0o027)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain.bin").write_bytes(b"")

    def no_umask(_mask: int) -> int:
        raise AssertionError("os.umask called while writing")

    monkeypatch.setattr(os, "umask", no_umask)
    save_image(tmp_path / "face.png", np.zeros((4, 4, 3), np.uint8))
    files.write_text_atomic(tmp_path / "a.json", "{}")
    staging = files.staging_dir(tmp_path, "x")
    assert [_mode(tmp_path / name) for name in ("plain.bin", "face.png", "a.json")] \
        == [0o640] * 3
    assert (_mode(tmp_path / "plain"), _mode(staging)) == (0o750, 0o750)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) \
        == ["a.json", "face.png", "plain.bin"]


def test_replacing_a_private_output_keeps_it_private(tmp_path, umask):
    umask(0o077)
    save_image(tmp_path / "face.png", np.zeros((4, 4, 3), np.uint8))
    save_image(tmp_path / "face.png", np.ones((4, 4, 3), np.uint8))
    assert _mode(tmp_path / "face.png") == 0o600
    assert load_image(tmp_path / "face.png").max() == 1


def test_the_umask_is_read_without_setting_it(umask):
    umask(0o077)
    assert current_umask() == 0o077  # what tests of the usual mode compare with


def test_importing_the_files_module_does_not_touch_the_umask():
    """Reading the umask at import set it (to 022) for a moment, for every thread."""
    code = ("import os\n"
            "def refuse(mask): raise SystemExit('os.umask called')\n"
            "os.umask = refuse\n"
            "import tinyfaces_trt.core.files, tinyfaces_trt.runtime.imageio\n"
            "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")


def _scaled_templates(factor: float) -> np.ndarray:
    t = DetectorConfig().templates.copy()
    t[:, :4] *= factor
    return t


def test_configs_with_other_templates_differ():
    """``==`` and hash ignored the templates: a config with other templates was "equal"."""
    a, b = DetectorConfig(), DetectorConfig(templates=_scaled_templates(2.0))
    assert a != b and hash(a) != hash(b)
    same = DetectorConfig(templates=DetectorConfig().templates.tolist())
    assert same == a and hash(same) == hash(a)
    assert len({a, b, same}) == 2


def test_a_config_owns_read_only_templates():
    """config.templates was writable and shared with the caller's array and with with_()
    copies: ``d.config.templates[:, :4] *= 3`` changed a live detector's boxes."""
    mine = _scaled_templates(1.0)
    c = DetectorConfig(templates=mine)
    mine[4] = 0  # the caller's later write to its own array
    assert c.templates[4].tolist() == [-40.5, -54.5, 40.5, 54.5, 1.0]
    copy = c.with_(prob_thresh=0.7)
    for config in (c, copy, pickle.loads(pickle.dumps(c))):
        assert not config.templates.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            config.templates[:, :4] *= 3
    assert not np.shares_memory(c.templates, copy.templates)
    assert copy.templates[4].tolist() == [-40.5, -54.5, 40.5, 54.5, 1.0]


@pytest.mark.parametrize("make, message", [
    (lambda: Normalization(1.0, (0, 0), (1, 1, 1)),
     "normalization.mean must be three numbers (R, G, B), got (0, 0)"),
    (lambda: Normalization(1.0, (0, 0, 0), "std"),
     "normalization.std must be three numbers (R, G, B), got 'std'"),
    (lambda: Normalization("1", (0, 0, 0), (1, 1, 1)),
     "normalization.input_scale must be a number, got '1' (str)"),
    (lambda: DetectorConfig(normalization=Normalization(1.0, (0, 0, 0), (1, -1, 1))),
     "normalization std must not be 0 or negative, got (1.0, -1.0, 1.0)"),
    (lambda: DetectorConfig(normalization=Normalization(0, (0, 0, 0), (1, 1, 1))),
     "normalization.input_scale must be > 0, got 0.0"),
    (lambda: DetectorConfig(normalization=Normalization(1, (0, 0, np.inf), (1, 1, 1))),
     "normalization holds a non-finite number: Normalization(input_scale=1.0, "
     "mean=(0.0, 0.0, inf), std=(1.0, 1.0, 1.0))"),
    (lambda: DetectorConfig(pyramid="fixed", fixed_scales=()),
     'fixed_scales must not be empty with pyramid="fixed"; give the exponents k of its '
     "levels, e.g. (-1.0, 0.0, 1.0)"),
    (lambda: DetectorConfig(pyramid="fixed", fixed_scales=(0.0, 2000.0)),
     "fixed_scales are exponents k (a level is 2**k times the image), each within +-64; "
     "got 2000"),
    (lambda: DetectorConfig().with_(prob=0.3), "unknown detector config field(s) prob; known: "
     "variant, templates, normalization, stride, offset, template_policy, prob_thresh, "
     "nms_thresh, box_pixel_offset, clip_boxes, pyramid, fixed_scales, max_input_dim, "
     "min_face, max_face, size_refinement, score"),
    (lambda: DetectorConfig(templates=[["a"] * 5] * 25),
     "templates must be a (25, 5) array of numbers, got list"),
])
def test_malformed_normalization_and_scales_are_config_errors(make, message):
    """They were accepted, then every detect failed (a bare IndexError, or an ImageError
    blaming the image), or the config could not be hashed."""
    with pytest.raises(ConfigError) as info:
        make()
    assert str(info.value) == message


def test_normalization_stores_floats_and_a_manifest_goes_through_the_same_checks():
    n = Normalization(1, [1, 2, 3], np.array([4, 5, 6]))
    assert (n.input_scale, n.mean, n.std) == (1.0, (1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    assert type(n.mean[0]) is float and hash(DetectorConfig(normalization=n))
    assert DetectorConfig(pyramid="adaptive", fixed_scales=()).fixed_scales == ()
    bad = DetectorConfig().to_dict()
    bad["normalization"]["mean"] = [0.5, 0.5]
    with pytest.raises(ConfigError, match=r"^normalization.mean must be three numbers"):
        DetectorConfig.from_dict(bad)


@pytest.mark.parametrize("options, message", [
    (dict(fp16="false"), "fp16 must be True, False or None, got 'false' (str)"),
    (dict(fp16=0), "fp16 must be True, False or None, got 0 (int)"),
    (dict(gpu_stages="false"), "gpu_stages must be True, False or None, got 'false' (str)"),
    (dict(providers=123), "providers must be a provider name, 'auto', a list of names such as "
     "['cuda', 'cpu'], or None; got 123"),
    (dict(providers=["cpu", 1]), "providers must be a provider name, 'auto', a list of names "
     "such as ['cuda', 'cpu'], or None; got ['cpu', 1]"),
    (dict(config_overrides="prob_thresh"), "config_overrides must be a mapping of config "
     "fields to values, e.g. {'prob_thresh': 0.8}, or None; got 'prob_thresh' (str)"),
    (dict(cache_dir=123), "cache_dir must be a path (str or os.PathLike) or None, got 123 (int)"),
    (dict(model_dir=b"export"), "model_dir must be a path (str or os.PathLike) or None, got "
     "b'export' (bytes) (decode a bytes path with os.fsdecode)"),
    (dict(weights=123), "weights must be a path (str or os.PathLike) or None, got 123 (int)"),
    (dict(progress="loud"), "progress must be a function taking a line of text, or None; got "
     "'loud'"),
])
def test_create_detector_refuses_options_of_the_wrong_type(options, message, tmp_path):
    """fp16="false" exported fp16 and gpu_stages="false" asked for the CUDA stages (taken by
    truth value); the others failed as bare TypeError/AttributeError."""
    if "model_dir" not in options:  # where a check is missing: no export into the cache
        options = {**options, "model_dir": str(tmp_path / "none")}
    with pytest.raises(ConfigError) as info:
        tinyfaces_trt.create_detector(**options)
    assert str(info.value) == message


def test_create_detector_accepts_options_of_the_right_types(tmp_path):
    """Right types pass the check and reach the export folder (missing here)."""
    with pytest.raises(ManifestError, match="does not exist"):
        tinyfaces_trt.create_detector(model_dir=tmp_path / "none", fp16=False,
                                      providers=("cpu",), gpu_stages=None,
                                      config_overrides={"prob_thresh": 0.8},
                                      cache_dir=str(tmp_path), progress=print)


def test_auto_with_an_export_folder_does_not_import_torch(tmp_path):
    """torch was imported (seconds, ~200 MiB) to ask torch.cuda.is_available(), then the
    torch backends were dropped because a folder was given."""
    code = ("import sys\n"
            "from tinyfaces_trt.detectors import resolve_backend\n"
            f"print(resolve_backend('auto', {str(tmp_path)!r}), 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.split()[-1] == "False"


@pytest.mark.parametrize("value, message", [
    (b"\xff\xd8", "load_image takes a file path (str or os.PathLike), got bytes; for encoded "
     "image bytes in memory use tinyfaces_trt.runtime.imageio.decode_image"),
    (io.BytesIO(b"x"), "load_image takes a file path (str or os.PathLike), got BytesIO; for an "
     "open binary file use tinyfaces_trt.runtime.imageio.load_image_stream"),
    (Image.new("RGB", (2, 2)), "load_image takes a file path (str or os.PathLike), got Image; "
     "a Pillow image needs no loading: np.asarray(image.convert('RGB'))"),
    (None, "load_image takes a file path (str or os.PathLike), got NoneType"),
])
def test_load_image_says_what_it_takes(value, message):
    with pytest.raises(ImageError) as info:
        load_image(value)
    assert str(info.value) == message


def test_decode_image_says_what_it_takes():
    """A path given to decode_image failed as a bare TypeError from io.BytesIO."""
    with pytest.raises(ImageError) as info:
        decode_image("photo.jpg")
    assert str(info.value) == ("decode_image takes the encoded image's bytes, got str; for a "
                               "file path use load_image")
    encoded = io.BytesIO()
    Image.new("RGB", (3, 2), (10, 20, 30)).save(encoded, "PNG")
    pixels = decode_image(np.frombuffer(encoded.getvalue(), np.uint8))  # any bytes-like
    assert pixels.shape == (2, 3, 3) and pixels[0, 0].tolist() == [10, 20, 30]


@pytest.mark.parametrize("options, message", [
    (dict(block=2.5), "pixelation block must be a whole number >= 2 of pixels (1 px cells would "
                       "leave the face as it is), got 2.5"),
    (dict(cells="5"), "pixelation grid must have a whole number >= 1 of cells, got '5'"),
    (dict(scale="1.3"), "mask scale must be a number >= 1 (1 = the detected box): a smaller mask "
                        "leaves part of the face visible, got '1.3'"),
    (dict(color=(255, 0)), "solid colour must be three whole numbers 0..255, got (255, 0)"),
])
def test_mask_styles_of_the_wrong_type_are_refused_when_made(options, message):
    """MaskStyle(block=2.5) was accepted, then apply_masks failed with a numpy TypeError."""
    with pytest.raises(TinyFacesError) as info:
        MaskStyle(**options)
    assert str(info.value) == message


def test_mask_style_numbers_are_stored_as_python_numbers():
    style = MaskStyle(mode="pixelate", block=np.int64(2), cells=5.0, color=np.array([9, 8, 7]))
    assert (style.block, style.cells, style.color) == (2, 5, (9, 8, 7))
    image = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    out = apply_masks(image, np.array([[0, 0, 1, 1]]), style)
    # one 2-pixel block: the means 7.5, 8.5, 9.5 of its 4 pixels, rounded half to even
    assert out[:2, :2].reshape(-1, 3).tolist() == [[8, 8, 10]] * 4
    assert np.array_equal(out[2:], image[2:]) and np.array_equal(out[:, 2:], image[:, 2:])
