"""tinyfaces_trt.core: what every layer shares, importing nothing else of ours.

Errors, the detector config, the pyramid rule, input-shape profiles, the export-folder
manifest, file hashing, safe output files, the network-runner protocol and command-line
helpers. Only the standard library and numpy.
"""
