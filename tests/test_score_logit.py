"""``DetectorConfig.score``: column 4 as the network's float32 logit (``"logit"``), as the
references print ``score_cls``, or as the probability (``"prob"``, the default).

A float32 probability is 1 above a logit of about 16.6 and keeps only a few of a large logit's
decimals, so tf-detect's WIDER files (whose scores the official evaluation min-max normalises)
took the logit back from it: 16.635532 for 20.0. With ``--wider-dir`` tf-detect now runs its
detector with ``score="logit"`` and writes the exact logits; every other output keeps the
probability, and the settings recorded for reruns are unchanged. Stand-in networks here give
score maps with logits 20.0 and 9.123456, on the host path, the device path (the kernels' CPU
build over host memory) and through tf-detect.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

import host_cudart
from helpers_cli import run_tf_detect
from helpers_kernels import cpu_build_missing, cpu_library_path, use_cpu_build_for_cuda_stages
from tinyfaces_trt.cli import detect as cli_detect
from tinyfaces_trt.core.config import NUM_TEMPLATES, DetectorConfig
from tinyfaces_trt.core.errors import ConfigError
from tinyfaces_trt.core.runner import RunnerBase, RunnerCapabilities
from tinyfaces_trt.detector_record import DETECTION_FIELDS, DetectorRecord, detector_record
from tinyfaces_trt.runtime.backends import apply_overrides
from tinyfaces_trt.runtime.pipeline import Detector
from tinyfaces_trt.wider.format import read_detection_file

LOGITS = (np.float32(20.0), np.float32(9.123456))


def score_maps(n: int, h: int, w: int) -> np.ndarray:
    """(n, 125, ceil(h/8), ceil(w/8)) float32: every cell far below any threshold but two,
    logit 20.0 at template 4's cell (1, 1) and 9.123456 at template 6's last-but-one cell;
    no box regression."""
    hh, ww = -(-h // 8), -(-w // 8)
    maps = np.zeros((n, 5 * NUM_TEMPLATES, hh, ww), np.float32)
    maps[:, :NUM_TEMPLATES] = -10.0
    maps[:, 4, min(1, hh - 1), min(1, ww - 1)] = LOGITS[0]
    if hh >= 4 and ww >= 4:
        maps[:, 6, hh - 2, ww - 2] = LOGITS[1]
    return maps


class LogitRunner(RunnerBase):
    """A host stand-in network giving :func:`score_maps` for any input (batches too)."""

    capabilities = RunnerCapabilities(batch=True)

    def run(self, net_input: np.ndarray) -> np.ndarray:
        n, _, h, w = np.shape(net_input)
        return score_maps(n, h, w)


def image(height: int = 96, width: int = 128) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8)


def sigmoid32(logits: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))).astype(np.float32)


# --- the config field ---------------------------------------------------------------------------

def test_score_is_prob_by_default_and_logit_on_request():
    assert DetectorConfig().score == "prob"
    assert DetectorConfig(score="logit").score == "logit"
    assert DetectorConfig.for_variant("matconvnet", score="logit").score == "logit"
    assert DetectorConfig().with_(score="logit") != DetectorConfig()


@pytest.mark.parametrize("value, message", [
    ("probability", "unknown score 'probability'; expected one of ('prob', 'logit')"),
    ("Logit", "unknown score 'Logit'"),
    (1, "score must be a string, got 1 (int)"),
    (None, "score must be a string, got None"),
], ids=["probability", "Logit", "int", "None"])
def test_other_scores_are_config_errors(value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DetectorConfig(score=value)


def test_score_is_settable_through_config_overrides():
    """Not a field of the network (an export or checkpoint does not fix it)."""
    config = DetectorConfig.for_variant("matconvnet")
    assert apply_overrides(config, {"score": "logit"}) == config.with_(score="logit")
    with pytest.raises(ConfigError, match="unknown score"):
        apply_overrides(config, {"score": "odds"})


def test_configs_stored_before_the_field_read_as_the_default():
    """A manifest written before ``score`` existed has no such key: its config is the
    default's, equal to (and hashing as) a config made now; a stored one round-trips."""
    for config in (DetectorConfig(), DetectorConfig.for_variant("matconvnet", prob_thresh=0.03)):
        stored = config.to_dict()
        assert stored["score"] == "prob"
        del stored["score"]
        old = DetectorConfig.from_dict(json.loads(json.dumps(stored)))
        assert old == config and hash(old) == hash(config) and old.score == "prob"
    logit = DetectorConfig(score="logit")
    assert DetectorConfig.from_dict(json.loads(json.dumps(logit.to_dict()))) == logit
    with pytest.raises(ConfigError, match="unknown score"):
        DetectorConfig.from_dict({**DetectorConfig().to_dict(), "score": "p"})


# --- host path ----------------------------------------------------------------------------------

def test_host_path_writes_the_float32_logits_with_score_logit():
    picture = image()
    prob = Detector(LogitRunner(), DetectorConfig()).detect(picture)
    logit = Detector(LogitRunner(), DetectorConfig(score="logit")).detect(picture)
    assert logit.dtype == np.float32 and logit.shape == prob.shape and len(logit) >= 2
    np.testing.assert_array_equal(logit[:, :4], prob[:, :4])  # the same boxes, same order
    assert set(logit[:, 4].tolist()) == {float(v) for v in LOGITS}
    assert logit[0, 4] == LOGITS[0] and LOGITS[1] in logit[:, 4]
    # "prob": the probability, in which 20.0 is exactly 1
    assert prob[:, 4].tobytes() == sigmoid32(logit[:, 4]).tobytes()
    assert prob[0, 4] == 1.0


def test_the_threshold_selects_on_the_logit_whatever_column_4_holds():
    """prob_thresh 0.9999 is a logit of 9.21: 9.123456 does not pass, 20.0 does, with either
    score (decode compares logits with logit_thresh; column 4 decides nothing)."""
    picture = image()
    for score in ("prob", "logit"):
        got = Detector(LogitRunner(), DetectorConfig(prob_thresh=0.9999, score=score)).detect(picture)
        assert len(got) > 0
        want = LOGITS[0] if score == "logit" else np.float32(1.0)
        assert np.all(got[:, 4] == want), score


# --- device path: the kernels' CPU build over host memory ----------------------------------------

_NO_DEVICE = cpu_build_missing() or host_cudart.missing()


class DeviceLogitRunner(RunnerBase):
    """A device-I/O stand-in: :func:`score_maps` handed back on the device, on its stream."""

    capabilities = RunnerCapabilities(device_io=True, batch=True)

    def __init__(self, stream):
        self.cuda_stream, self.buffers = stream, []

    @property
    def stream(self):
        return self.cuda_stream.handle

    def run(self, net_input):
        from tinyfaces_trt.runtime.backends import cuda_device

        assert isinstance(net_input, cuda_device.DeviceArray)
        maps = score_maps(*net_input.shape[:1], *net_input.shape[2:])
        buf = cuda_device.DeviceBuffer(maps.nbytes)
        buf.upload(maps, self.cuda_stream)
        self.buffers.append(buf)
        return cuda_device.DeviceArray(buf.ptr, maps.shape, np.float32, owner=buf)

    def close(self):
        for buf in self.buffers:
            buf.free()
        self.buffers = []


@pytest.fixture
def device_stream(monkeypatch, tmp_path_factory):
    """A stream of cuda_device over host memory, the kernel loader on the CPU build."""
    if _NO_DEVICE:
        pytest.skip(_NO_DEVICE)
    from tinyfaces_trt.runtime.backends import cuda_device

    host = use_cpu_build_for_cuda_stages(monkeypatch, cpu_library_path(tmp_path_factory),
                                         finalizers=False)
    stream = cuda_device.Stream()
    yield stream
    stream.close()
    host.release_all()


def test_device_path_gives_the_host_paths_rows(device_stream):
    """CudaPreprocessor, the device runner and CudaPostprocessor (tf_nms with score_logit):
    the host path's rows; with ``score="logit"`` column 4 bit for bit (the logits come through
    the sort keys unchanged), with ``"prob"`` within the float32 sigmoid's 1e-6."""
    from tinyfaces_trt.runtime.backends import detector_for

    pictures = [image(80, 72), image(), image()[::-1].copy()]  # a batch takes one size
    for score in ("prob", "logit"):
        config = DetectorConfig(score=score)
        want = [Detector(LogitRunner(), config).detect(p) for p in pictures]
        runner = DeviceLogitRunner(device_stream)
        with detector_for(runner, config, gpu_stages=True) as detector:
            assert type(detector.postprocessor).__name__ == "CudaPostprocessor"
            got = [detector.detect(pictures[0])] + detector.detect_batch(pictures[1:])
        runner.close()
        for g, w in zip(got, want, strict=True):
            assert g.dtype == np.float32 and g.shape == w.shape and len(g) >= 2
            np.testing.assert_allclose(g[:, :4], w[:, :4], rtol=0, atol=1e-3)
            if score == "logit":
                assert g[:, 4].tobytes() == w[:, 4].tobytes()
                assert g[0, 4] == LOGITS[0] and LOGITS[1] in g[:, 4]
            else:
                np.testing.assert_allclose(g[:, 4], w[:, 4], rtol=0, atol=1e-6)


# --- tf-detect --------------------------------------------------------------------------------

@pytest.fixture
def fake_network(monkeypatch):
    """tf-detect's detector (the untrained default network's spec) over :class:`LogitRunner`;
    records the config overrides each detector was made with."""
    from tinyfaces_trt import detectors

    made: list[dict] = []

    def create_detector(backend, model_dir=None, weights=None, config_overrides=None, **_):
        assert model_dir is None and weights is None
        made.append(dict(config_overrides or {}))
        config = apply_overrides(DetectorConfig(), config_overrides)
        return Detector(LogitRunner(), config,
                        identity=detectors.torch_identity(None).running(False))

    monkeypatch.setattr(detectors, "create_detector", create_detector)
    return made


@pytest.fixture
def wider_images(tmp_path):
    root = tmp_path / "images" / "0--Parade"
    root.mkdir(parents=True)
    Image.fromarray(image()).save(root / "p.png")
    return root


def test_tf_detect_wider_dir_writes_the_exact_logits(capsys, fake_network, wider_images, tmp_path):
    """The WIDER file holds the network's logits (20.000000, 9.123456), not a logit taken back
    from a float32 probability (16.635532, 9.123xxx); the JSON, the console line and the
    drawing keep the probability."""
    pred, out = tmp_path / "pred", tmp_path / "out"
    code, stdout, stderr = run_tf_detect(capsys, wider_images, "--backend", "onnxruntime",
                                         "--wider-dir", pred, "--out", out)
    assert code == 0, stderr
    assert fake_network == [{"score": "logit"}]
    text = (pred / "0--Parade" / "p.txt").read_text()
    assert "16.635532" not in text
    parsed = read_detection_file(pred / "0--Parade" / "p.txt")
    scores = [line.split()[-1] for line in text.splitlines()[2:]]
    assert set(scores) == {"20.000000", "9.123456"} and len(scores) == len(parsed.boxes) >= 2
    record = json.loads((out / "p.json").read_text())
    detections = record["detections"]
    assert len(detections) == len(scores)
    by_logit = {"20.000000": 1.0, "9.123456": round(float(sigmoid32([LOGITS[1]])[0]), 5)}
    assert [d["score"] for d in detections] == [by_logit[s] for s in scores]
    assert by_logit["9.123456"] == 0.99989
    # the console line: the probabilities (1.000 with three decimals), as without --wider-dir
    (line,) = stdout.splitlines()
    shown = [part.rsplit(" ", 1)[1] for part in line.split(": ", 2)[2].split("; ")
             if not part.startswith("...")]
    assert shown and set(shown) == {"1.000"}
    # the detection settings recorded for reruns are tf-detect's detection flags only
    wider_record = json.loads(next((pred / ".tf-detect").rglob("p.json")).read_text())
    assert set(wider_record["config"]) == set(record["config"]) == set(DETECTION_FIELDS)
    assert "score" not in wider_record["config"]


def test_tf_detect_switches_to_logits_only_with_wider_dir(capsys, fake_network, wider_images,
                                                          tmp_path):
    """Without --wider-dir the detector runs the probability; with it the logit, and the
    printed JSON is the same."""
    printed = []
    for extra in ((), ("--wider-dir", tmp_path / "pred")):
        code, stdout, stderr = run_tf_detect(capsys, wider_images, "--backend", "onnxruntime",
                                             "--json", *extra)
        assert code == 0, stderr
        printed.append(json.loads(stdout)["images"])
    assert fake_network == [{"score": "prob"}, {"score": "logit"}]
    assert printed[0] == printed[1]
    assert {d["score"] for d in printed[1][0]["detections"]} == {1.0, 0.99989}


def test_a_rerun_keeps_what_the_switch_made_and_what_older_runs_made(capsys, fake_network,
                                                                     wider_images, tmp_path):
    """The internal score switch changes no recorded setting: a rerun skips the image (no
    "making its outputs again"), also with --out alone after a --wider-dir run and the other
    way round."""
    pred, out = tmp_path / "pred", tmp_path / "out"
    args = (wider_images, "--backend", "onnxruntime", "--out", out)
    assert run_tf_detect(capsys, *args)[0] == 0
    code, _, stderr = run_tf_detect(capsys, *args, "--wider-dir", pred)
    assert code == 0 and "making its outputs again" not in stderr  # only the WIDER file is new
    before = (pred / "0--Parade" / "p.txt").read_text()
    assert "20.000000" in before and "16.635532" not in before
    code, _, stderr = run_tf_detect(capsys, *args, "--wider-dir", pred)
    assert code == 0 and "skipped, its outputs exist" in stderr
    assert "making its outputs again" not in stderr
    assert (pred / "0--Parade" / "p.txt").read_text() == before


def test_records_written_before_the_field_match_a_logit_detector():
    """A detections JSON or sidecar of an older version records the detection fields without
    ``score``; the record of a detector with either score is the same as it (nothing made
    again): ``score`` says what column 4 holds, not where the faces are."""
    older = {"config": {"prob_thresh": 0.03, "nms_thresh": 0.3, "min_face": None,
                        "max_face": None, "pyramid": "adaptive"}}
    records = [detector_record(None, None, {"prob_thresh": 0.03, "score": score}, "fp32")
               for score in ("prob", "logit")]
    assert records[0] == records[1] and isinstance(records[1], DetectorRecord)
    assert set(records[1].config) == set(DETECTION_FIELDS) and "score" not in DETECTION_FIELDS
    assert records[1].changes({**older, "model": dict(records[1].model)}) == []


# --- the helpers tf-detect (and its --ray workers) use ------------------------------------------

def test_split_scores_gives_probabilities_and_the_exact_logits():
    picture = image()
    detector = Detector(LogitRunner(), DetectorConfig(score="logit"))
    raw = detector.detect(picture)
    boxes, logits = cli_detect.split_scores(detector, raw)
    assert logits is not None and logits.dtype == np.float32
    assert logits.tobytes() == raw[:, 4].tobytes()
    prob = Detector(LogitRunner(), DetectorConfig()).detect(picture)
    assert boxes.dtype == np.float32 and boxes.tobytes() == prob.tobytes()
    plain = Detector(LogitRunner(), DetectorConfig())
    same, none = cli_detect.split_scores(plain, prob)
    assert same is prob and none is None
    empty, no_logits = cli_detect.split_scores(detector, np.zeros((0, 5), np.float32))
    assert empty.shape == (0, 5) and no_logits.shape == (0,)


def test_detector_spec_asks_for_logits_only_with_wider_dir(monkeypatch):
    from tinyfaces_trt.cli.detect import build_parser

    for extra, want in (((), ()), (("--wider-dir", "pred"), (("score", "logit"),))):
        args = build_parser().parse_args(["a.jpg", "--backend", "onnxruntime",
                                          "--prob-thresh", "0.03", *extra])
        spec = cli_detect.detector_spec(args)
        assert spec.config_overrides == (("score", "prob"), ("prob_thresh", 0.03), *want)
        assert cli_detect.record_from_arguments(args).config["prob_thresh"] == 0.03
        assert "score" not in cli_detect.record_from_arguments(args).config


def test_write_wider_result_writes_given_logits_unchanged(tmp_path):
    from tinyfaces_trt.cli.detect_plan import DetectOptions, ImageJob, write_wider_result

    job = ImageJob(tmp_path / "e" / "x.jpg", tmp_path / "x.jpg", "e")
    rows = np.float32([[10, 10, 40, 50, 1.0], [60, 10, 90, 50, sigmoid32([LOGITS[1]])[0]]])
    path = tmp_path / "pred" / "e" / "x.txt"
    write_wider_result(path, job, rows, DetectOptions("onnxruntime"), np.float32(LOGITS))
    assert [line.split()[-1] for line in path.read_text().splitlines()[2:]] == \
        ["20.000000", "9.123456"]
    write_wider_result(path, job, rows, DetectOptions("onnxruntime"))  # no logits: taken back
    scores = [float(line.split()[-1]) for line in path.read_text().splitlines()[2:]]
    assert scores[0] == 16.635532 and math.isclose(scores[1], 9.123456, abs_tol=2e-3)
    with pytest.raises(ValueError, match="1 logits for 2 boxes"):
        write_wider_result(path, job, rows, DetectOptions("onnxruntime"), LOGITS[:1])


def test_wider_results_of_an_earlier_version_are_made_again(capsys, fake_network, wider_images,
                                                            tmp_path):
    """A WIDER record without ``"scores": "logit"`` (an earlier tf-detect: logits taken back
    from float32 probabilities, 16.635532 above 16.6) is made again, saying why."""
    pred = tmp_path / "pred"
    args = (wider_images, "--backend", "onnxruntime", "--wider-dir", pred)
    assert run_tf_detect(capsys, *args)[0] == 0
    result = pred / "0--Parade" / "p.txt"
    (record,) = (pred / ".tf-detect").rglob("p.json")
    assert json.loads(record.read_text())["scores"] == "logit"
    # what an earlier version left: the approximate logit, a record without "scores"
    result.write_text(result.read_text().replace("20.000000", "16.635532"))
    older = json.loads(record.read_text())
    del older["scores"]
    record.write_text(json.dumps(older) + "\n")
    code, _, stderr = run_tf_detect(capsys, *args)
    assert code == 0
    assert ("making its outputs again: they were made with scores taken back from float32 "
            "probabilities (an earlier tf-detect), not the network's exact logits") in stderr
    assert "20.000000" in result.read_text() and "16.635532" not in result.read_text()
    assert json.loads(record.read_text())["scores"] == "logit"
    code, _, stderr = run_tf_detect(capsys, *args)
    assert code == 0 and "skipped, its outputs exist" in stderr


# --- an export whose config says "logit" ------------------------------------------------------

def test_the_clis_record_probabilities_of_an_export_configured_for_logits(monkeypatch, capsys,
                                                                        wider_images, tmp_path):
    """An export made from Python with ``DetectorConfig(score="logit")`` gave tf-anonymize's
    sidecars (and review bands) and tf-detect's JSON logits (20.0) where they hold
    probabilities: every CLI's detector now runs with ``score="prob"``."""
    from tinyfaces_trt import detectors
    from tinyfaces_trt.anonymize import cli as anonymize_cli

    def create_detector(backend, model_dir=None, weights=None, config_overrides=None, **_):
        config = apply_overrides(DetectorConfig(score="logit"), config_overrides)
        return Detector(LogitRunner(), config,
                        identity=detectors.torch_identity(None).running(False))

    monkeypatch.setattr(detectors, "create_detector", create_detector)
    want = {1.0, round(float(sigmoid32([LOGITS[1]])[0]), 5)}  # (faces found at several levels)
    out = tmp_path / "anon"
    assert anonymize_cli.main([str(wider_images), "--out", str(out), "--backend", "onnxruntime",
                               "--quiet"]) == 0, capsys.readouterr().err
    side = json.loads((out / "p.png.json").read_text())
    assert {f["score"] for f in side["frames"][0]["faces"]} == want
    code, stdout, stderr = run_tf_detect(capsys, wider_images, "--backend", "onnxruntime", "--json")
    assert code == 0, stderr
    assert {d["score"] for d in json.loads(stdout)["images"][0]["detections"]} == want
