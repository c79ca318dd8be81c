"""tinyfaces-trt: deploy the Finding Tiny Faces detector (Hu & Ramanan, CVPR 2017).

    import tinyfaces_trt
    detector = tinyfaces_trt.create_detector("onnxruntime", weights="checkpoint_50.pth")
    boxes = detector.detect(tinyfaces_trt.load_image("photo.jpg"))   # (N, 5) x1, y1, x2, y2, prob

Layers (docs/DESIGN.md draws the graph; ``tests/test_architecture.py`` enforces it):

- ``tinyfaces_trt.core`` (``core/``): errors, config, pyramid, profiles, the export-folder
  manifest, hashing, files, the runner protocol. Imports nothing else of ours.
- ``tinyfaces_trt.kernels`` (``kernels/``): CUDA kernels with a C ABI, their ctypes binding.
- ``tinyfaces_trt.runtime`` (``runtime/``): the torch-free pipeline and its runners.
- ``tinyfaces_trt.export`` (``export/``): the torch reference model and the exporters.
- this package's own modules (``tinyfaces_trt/``): what ties them together: the detector
  factory with its export cache, ``tf-detect``, the parity suite, WIDER evaluation.

The names below are imported on first use, so ``import tinyfaces_trt.runtime`` stays light.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see of the lazy names (_LAZY); nothing imported at run time
    from tinyfaces_trt.core.config import DetectorConfig
    from tinyfaces_trt.core.errors import TinyFacesError
    from tinyfaces_trt.detectors import available_backends, create_detector
    from tinyfaces_trt.runtime.imageio import load_image
    from tinyfaces_trt.runtime.pipeline import Detector

__version__ = "0.1.0"

# In a source checkout the subpackages live in the top-level folders (core/, runtime/, ...)
# next to this one: add the checkout root to this package's search path, so that
# ``python -c "import tinyfaces_trt.runtime"`` works there without installing. An installed
# wheel has them inside this folder and skips this.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "core" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # type: ignore[name-defined]  # noqa: F821

_LAZY = {
    "create_detector": "tinyfaces_trt.detectors",
    "available_backends": "tinyfaces_trt.detectors",
    "Detector": "tinyfaces_trt.runtime.pipeline",
    "DetectorConfig": "tinyfaces_trt.core.config",
    "TinyFacesError": "tinyfaces_trt.core.errors",
    "load_image": "tinyfaces_trt.runtime.imageio",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tinyfaces_trt' has no attribute {name!r}")
    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["__version__", "create_detector", "available_backends", "Detector", "DetectorConfig",
           "TinyFacesError", "load_image"]
assert set(__all__) == {"__version__", *_LAZY}
