"""Fused CUDA kernels of Tiny Faces with a C ABI: pyramid resize + normalise, decode, sort + NMS.

The C header is ``include/tinyfaces_kernels.h``; the sources build into
``libtinyfaces_kernels.so`` with ``tf-build-kernels`` or ``make -C kernels``. This package
holds the sources, that build helper and the ctypes binding (:func:`load_library`).
"""

from tinyfaces_trt.kernels.binding import KernelError, KernelLibrary, Status, load_library

__all__ = ["KernelError", "KernelLibrary", "Status", "load_library"]
