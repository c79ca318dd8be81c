"""The ONNX opsets ``tf-export`` writes, kept apart from the exporter so that the command
line (``tf-export --help``, argument checks) needs neither torch nor onnx."""

#: The opset written by default.
DEFAULT_OPSET = 17
#: Oldest ONNX opset the exported graph (dynamic crop, ConvTranspose) is written for.
MIN_OPSET = 13
