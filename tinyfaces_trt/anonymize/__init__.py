"""Face anonymisation of images, folders and videos (``tf-anonymize``).

Modules: :mod:`.tracking` (IoU tracks, held and back-filled masks), :mod:`.video` (PyAV
decode/encode/remux on threads), :mod:`.sidecar` (audit JSON), :mod:`.jobs` (tasks and
``process_file``), :mod:`.cli`. The masks themselves are :mod:`tinyfaces_trt.runtime.masks`.
"""
