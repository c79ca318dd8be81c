"""tinyfaces_trt.runtime: the torch-free Tiny Faces runtime.

    from tinyfaces_trt.runtime import create_detector, load_image
    detector = create_detector("onnxruntime", model_dir="export/")
    boxes = detector.detect(load_image("photo.jpg"))   # (N, 5) float32 x1, y1, x2, y2, prob

Heavy backends (onnxruntime, tensorrt, cuda-python) are imported only when used.
"""

from .backends import available_backends, create_detector
from .config import DetectorConfig, Normalization
from .errors import TinyFacesError
from .imageio import load_image
from .pipeline import Detector

__all__ = ["Detector", "DetectorConfig", "Normalization", "TinyFacesError", "available_backends",
           "create_detector", "load_image"]
