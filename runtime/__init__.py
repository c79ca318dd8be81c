"""tinyfaces_trt.runtime: the torch-free Tiny Faces runtime.

    from tinyfaces_trt.runtime import create_detector, load_image
    detector = create_detector("onnxruntime", model_dir="export/")
    boxes = detector.detect(load_image("photo.jpg"))   # (N, 5) float32 x1, y1, x2, y2, prob

Heavy backends (onnxruntime, tensorrt, cuda-python) are imported only when used. A checkpoint
or the untrained default network: :func:`tinyfaces_trt.create_detector`.
"""

from tinyfaces_trt.core.config import DetectorConfig, Normalization
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.runtime.backends import available_backends, create_detector
from tinyfaces_trt.runtime.imageio import load_image
from tinyfaces_trt.runtime.pipeline import Detector

__all__ = ["Detector", "DetectorConfig", "Normalization", "TinyFacesError", "available_backends",
           "create_detector", "load_image"]
