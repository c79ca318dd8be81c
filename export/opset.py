"""The ONNX opsets ``tf-export`` writes, kept apart from the exporter so that the command
line (``tf-export --help``, argument checks) needs neither torch nor onnx.

The range is what torch's exporter really writes for this network. Measured with torch 2.13,
onnxscript 0.7.2, onnx 1.23.2 and ONNX Runtime 1.32 (seeded ResNet-50, each opset exported
and its ``opset_import`` read back): the exporter writes opset 18 and converts the graph to
the requested opset; 15 to 28 come out as requested and pass the ONNX Runtime vs torch check
(fp32 max abs error 1.6e-5, fp16 1.5e-2, the same for every opset). 13 and 14 cannot be
converted (onnx's version converter has no adapter from ``Shape``-15 down) and 29 or newer
are beyond onnx 1.23's newest opset: for those the exporter silently kept opset 18. The
export reads the opset back from each written model and fails when it differs from the
requested one, so a torch or onnx version that writes another opset cannot go unnoticed.
"""

from __future__ import annotations

import numbers

#: The opset written by default.
DEFAULT_OPSET = 17
#: Oldest ONNX opset the exporter converts this graph to (see the module docstring).
MIN_OPSET = 15
#: Newest ONNX opset the exporter writes (onnx 1.23's newest; see the module docstring).
MAX_OPSET = 28
#: The supported range in words, for messages.
SUPPORTED = (f"tf-export writes ONNX opsets {MIN_OPSET} to {MAX_OPSET}, the ones torch's exporter "
             f"converts this network to (default {DEFAULT_OPSET})")


def opset_problem(opset: object) -> str | None:
    """Why ``opset`` cannot be exported (a phrase naming the supported range), or None when
    it is an integer in ``MIN_OPSET..MAX_OPSET``."""
    if isinstance(opset, bool) or not isinstance(opset, numbers.Integral):
        return f"opset must be an integer, got {opset!r} ({type(opset).__name__}); {SUPPORTED}"
    if not MIN_OPSET <= opset <= MAX_OPSET:
        return f"opset {opset} is not supported: {SUPPORTED}"
    return None
