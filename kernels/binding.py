"""ctypes binding of ``libtinyfaces_kernels.so`` (the C ABI of include/tinyfaces_kernels.h).

:func:`load_library` finds the shared library, checks its ABI, and returns a
:class:`KernelLibrary` whose methods take device pointers as ints and raise
:class:`KernelError` for a non-success ``tf_status``. The library is searched in order:

1. ``$TINYFACES_KERNELS_LIB`` (a path to the .so),
2. ``build/`` next to this package (``make -C kernels``),
3. the user cache directory where ``tf-build-kernels`` puts it (:func:`cache_dir`).
"""

from __future__ import annotations

import ctypes
import enum
import operator
import os
from pathlib import Path
from typing import Any

import numpy as np

from tinyfaces_trt.core.files import CACHE_ENV, cache_root
from tinyfaces_trt.core.errors import BackendUnavailableError, TinyFacesError

LIBRARY_NAME = "libtinyfaces_kernels.so"
ENV_LIBRARY = "TINYFACES_KERNELS_LIB"
ENV_CACHE = CACHE_ENV  # the project-wide cache root variable

# Mirrors of the header's constants (tests parse the header to keep them in step).
ABI_VERSION = 5
NUM_TEMPLATES = 25
MAX_DIM = 32768
MAX_CAPACITY = 2**31 - 1
MAX_NMS_CANDIDATES = 2**31 - 1  # no NMS cap: the candidate index range (ABI 1: 131072)
OVERFLOW_CAPACITY = 1
OVERFLOW_NMS = 2


class Status(enum.IntEnum):
    """``tf_status`` codes."""

    SUCCESS = 0
    NULL_POINTER = 1
    INVALID_SIZE = 2
    INVALID_CAPACITY = 3
    INVALID_VALUE = 4
    MISALIGNED = 5
    WORKSPACE_TOO_SMALL = 6
    ABI_MISMATCH = 7
    CUDA_ERROR = 8


class KernelError(TinyFacesError):
    """A kernel-library call returned a non-success status.

    Attributes:
        status: the :class:`Status` (a plain int for a code this binding does not know).
        cuda_error: the ``cudaError_t`` for :attr:`Status.CUDA_ERROR`, else 0.
    """

    def __init__(self, message: str, status: "Status | int", cuda_error: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.cuda_error = cuda_error


#: The integer C types of the ABI and their ranges.
C_INT_RANGES: dict[str, tuple[int, int]] = {
    "int": (-2**31, 2**31 - 1), "int32_t": (-2**31, 2**31 - 1), "int64_t": (-2**63, 2**63 - 1),
    "size_t": (0, 2**64 - 1), "void*": (0, 2**(8 * ctypes.sizeof(ctypes.c_void_p)) - 1)}


def c_ints(what: str, ctype: str, status: Status, **values: Any) -> list[int]:
    """``values`` (name=value, in order) as Python ints, each checked against the range of the
    C type ``ctype`` (a key of :data:`C_INT_RANGES`): ctypes would silently wrap an
    out-of-range int (2**32 + 10 passed as ``int`` is 10), so the library's own range checks
    would never see it.

    Raises:
        KernelError: ``status`` (what the library returns for an out-of-range value of that
            argument), naming ``what``, the argument and the range.
        TypeError: a value that is not an integer (a float, as ctypes refuses it).
    """
    lo, hi = C_INT_RANGES[ctype]
    out = []
    for name, value in values.items():
        v = value if type(value) is int else operator.index(value)
        if not lo <= v <= hi:
            raise KernelError(f"{what}: {name} = {v} is outside the range of its C type {ctype}, "
                              f"[{lo}, {hi}]", status)
        out.append(v)
    return out


class DecodeParams(ctypes.Structure):
    """``tf_decode_params``."""

    _fields_ = [("templates", (ctypes.c_float * 4) * NUM_TEMPLATES),
                ("active_mask", ctypes.c_uint32),
                ("logit_thresh", ctypes.c_float),
                ("stride", ctypes.c_float),
                ("offset", ctypes.c_float),
                ("scale", ctypes.c_float)]


class NmsParams(ctypes.Structure):
    """``tf_nms_params``."""

    _fields_ = [("nms_thresh", ctypes.c_float),
                ("pixel_offset", ctypes.c_float),
                ("clip", ctypes.c_int32),
                ("image_height", ctypes.c_int32),
                ("image_width", ctypes.c_int32),
                ("lookahead", ctypes.c_int32),
                ("score_logit", ctypes.c_int32),  # ABI 4: row[4] is the logit (1) or the prob (0)
                ("pixel_base", ctypes.c_float),  # ABI 5: the first pixel's coordinate, 0 or 1
                ("drop_outside", ctypes.c_int32)]  # ABI 5: boxes outside the image not written


class NmsStats(ctypes.Structure):
    """``tf_nms_stats`` (as downloaded from the device)."""

    _fields_ = [("num_kept", ctypes.c_uint32),
                ("num_candidates", ctypes.c_uint32),
                ("overflow", ctypes.c_uint32),
                ("nonfinite", ctypes.c_uint32)]  # NaN/inf score-map values (ABI 2: reserved)


NMS_STATS_DTYPE = np.dtype([("num_kept", "<u4"), ("num_candidates", "<u4"),
                            ("overflow", "<u4"), ("nonfinite", "<u4")])


def decode_params(templates: np.ndarray, active: np.ndarray, logit_thresh: float, stride: float,
                  offset: float, scale: float) -> DecodeParams:
    """Builds ``tf_decode_params``.

    Args:
        templates: (25, >=4) [x1, y1, x2, y2, ...] per template.
        active: bool[25], which templates decode at this level.
    """
    t = np.asarray(templates, dtype=np.float64)
    a = np.asarray(active, dtype=bool)
    if t.ndim != 2 or t.shape[0] != NUM_TEMPLATES or t.shape[1] < 4 or a.shape != (NUM_TEMPLATES,):
        raise TinyFacesError(f"decode params need templates (25, 4+) and active (25,), got "
                             f"{t.shape} and {a.shape}")
    p = DecodeParams()
    for c in range(NUM_TEMPLATES):
        for k in range(4):
            p.templates[c][k] = float(np.float32(t[c, k]))
    p.active_mask = int(sum(1 << c for c in range(NUM_TEMPLATES) if a[c]))
    p.logit_thresh = float(np.float32(logit_thresh))
    p.stride, p.offset, p.scale = float(stride), float(offset), float(scale)
    return p


#: ``tf_nms_params.lookahead``, the NMS resolve rule (the same boxes with each): a thread per
#: box waiting at the first undecided overlapping box of its walk; a thread per box walking on
#: past undecided ones for a kept one; a warp per box walking 32 candidates at a time.
NMS_WALK_ORDER, NMS_LOOKAHEAD, NMS_WARP = 0, 1, 2
NMS_RULES = {"walk-order": NMS_WALK_ORDER, "lookahead": NMS_LOOKAHEAD, "warp": NMS_WARP}


def nms_params(nms_thresh: float, pixel_offset: float, clip: bool, image_height: int,
               image_width: int, lookahead: int = NMS_WALK_ORDER,
               score_logit: bool = False, pixel_base: float = 0.0,
               drop_outside: bool = False) -> NmsParams:
    """Builds ``tf_nms_params`` (``lookahead``: the resolve rule, one of :data:`NMS_RULES`'
    values, the same result; ``score_logit``: the rows' fifth value is the float32 logit
    itself, not sigmoid(logit); ``pixel_base``: the image's first pixel coordinate, 0.0 or
    1.0 (``DetectorConfig.coordinate_base``), where ``clip`` and ``drop_outside`` put the
    image; ``drop_outside``: boxes lying entirely outside it are not written, as
    ``runtime.postprocess.finish_boxes`` drops them).

    Raises:
        KernelError: INVALID_SIZE when ``image_height`` / ``image_width`` do not fit the
            field's ``int32_t`` (:func:`c_ints`; tf_nms refuses the sizes in range that
            exceed TF_MAX_DIM).
    """
    height, width = c_ints("tf_nms_params", "int32_t", Status.INVALID_SIZE,
                           image_height=image_height, image_width=image_width)
    return NmsParams(float(nms_thresh), float(pixel_offset), int(bool(clip)), height, width,
                     int(lookahead), int(bool(score_logit)), float(pixel_base),
                     int(bool(drop_outside)))


def cache_dir() -> Path:
    """Where ``tf-build-kernels`` builds by default: ``kernels/`` in the cache root
    (:func:`tinyfaces_trt.core.files.cache_root`: ``$TINYFACES_CACHE``, else
    ``$XDG_CACHE_HOME/tinyfaces_trt``, else ``~/.cache/tinyfaces_trt``)."""
    return cache_root() / "kernels"


def package_dir() -> Path:
    """The installed ``tinyfaces_trt.kernels`` folder (sources, header, Makefile)."""
    return Path(__file__).parent


def library_candidates() -> list[Path]:
    """Where :func:`load_library` looks, in order."""
    paths = []
    env = os.environ.get(ENV_LIBRARY)
    if env:
        paths.append(Path(env).expanduser())
    paths.append(package_dir() / "build" / LIBRARY_NAME)
    paths.append(cache_dir() / LIBRARY_NAME)
    return paths


_loaded: dict[str, "KernelLibrary"] = {}


def load_library(path: str | os.PathLike[str] | None = None) -> "KernelLibrary":
    """Loads (once per path) and ABI-checks the kernel library.

    Args:
        path: the .so to load; None searches :func:`library_candidates`.

    Raises:
        BackendUnavailableError: not built / not found / not loadable / built for another ABI.
    """
    if path is not None:
        found = Path(path).expanduser()
        if not found.is_file():
            raise BackendUnavailableError(f"CUDA kernel library not found at {found}. {_BUILD_HINT}")
    else:
        env = os.environ.get(ENV_LIBRARY)
        if env and not Path(env).expanduser().is_file():
            raise BackendUnavailableError(
                f"${ENV_LIBRARY} points to {env}, which does not exist. {_BUILD_HINT}")
        existing = [p for p in library_candidates() if p.is_file()]
        if not existing:
            looked = ", ".join(str(p) for p in library_candidates())
            raise BackendUnavailableError(
                f"the CUDA kernel library {LIBRARY_NAME} is not built (looked in: {looked}). "
                f"{_BUILD_HINT}")
        found = existing[0]
    key = str(found.resolve())
    if key not in _loaded:
        _loaded[key] = KernelLibrary(found)
    return _loaded[key]


_BUILD_HINT = (f"Build it with `tf-build-kernels` (needs the CUDA toolkit's nvcc and make), or "
               f"`make -C <tinyfaces_trt/kernels>`, or set ${ENV_LIBRARY} to a built {LIBRARY_NAME}.")

_VOIDP = ctypes.c_void_p
_SIZE_P = ctypes.POINTER(ctypes.c_size_t)
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "tf_status_string": (ctypes.c_char_p, [ctypes.c_int]),
    "tf_last_cuda_error": (ctypes.c_int, []),
    "tf_last_error_message": (ctypes.c_char_p, []),
    "tf_abi_version": (ctypes.c_uint32, []),
    "tf_check_abi": (ctypes.c_int, [ctypes.c_uint32, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t]),
    "tf_get_device_count": (ctypes.c_int, [ctypes.POINTER(ctypes.c_int)]),
    "tf_resize_workspace_size": (ctypes.c_int, [ctypes.c_int] * 4 + [_SIZE_P]),
    "tf_resize_normalize": (ctypes.c_int, [_VOIDP, ctypes.c_int, ctypes.c_int, ctypes.c_int64, _VOIDP,
                                           ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_float),
                                           ctypes.POINTER(ctypes.c_float), _VOIDP, ctypes.c_size_t,
                                           _VOIDP]),
    "tf_resize_plan_size": (ctypes.c_int, [ctypes.c_int] * 4 + [_SIZE_P, _SIZE_P]),
    "tf_resize_plan": (ctypes.c_int, [ctypes.c_int] * 4 + [_VOIDP, ctypes.c_size_t, _VOIDP]),
    "tf_resize_normalize_planned": (ctypes.c_int, [
        _VOIDP, ctypes.c_int, ctypes.c_int, ctypes.c_int64, _VOIDP, ctypes.c_int, ctypes.c_int,
        ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float), _VOIDP, ctypes.c_size_t,
        _VOIDP, ctypes.c_size_t, _VOIDP]),
    "tf_candidates_size": (ctypes.c_int, [ctypes.c_int64, _SIZE_P]),
    "tf_candidates_reset": (ctypes.c_int, [_VOIDP, _VOIDP]),
    "tf_decode_level": (ctypes.c_int, [_VOIDP, ctypes.c_int, ctypes.c_int, ctypes.POINTER(DecodeParams),
                                       ctypes.c_int64, _VOIDP, ctypes.c_int64, _VOIDP]),
    "tf_nms_workspace_size": (ctypes.c_int, [ctypes.c_int64, _SIZE_P]),
    "tf_nms": (ctypes.c_int, [_VOIDP, ctypes.c_int64, ctypes.POINTER(NmsParams), ctypes.c_int64, _VOIDP,
                              ctypes.c_size_t, _VOIDP, _VOIDP, _VOIDP]),
}


_VOID_MAX = C_INT_RANGES["void*"][1]
_Float3 = ctypes.c_float * 3


def _ptr(value: Any, what: str, name: str) -> int | None:
    """Pointer argument ``name`` of ``what``: an int (0 -> NULL) or anything ``device_pointer``
    understands; an address outside [0, 2**64 - 1] raises KernelError (INVALID_VALUE)."""
    if type(value) is int and 0 <= value <= _VOID_MAX:  # the hot path: a plain address
        return value or None
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        address = value
    elif hasattr(value, "ptr") or hasattr(value, "handle"):
        address = getattr(value, "ptr") if hasattr(value, "ptr") else getattr(value, "handle")
    elif getattr(value, "__cuda_array_interface__", None) is not None:
        address = value.__cuda_array_interface__["data"][0]
    else:
        raise TinyFacesError(f"cannot pass {type(value).__name__} as a pointer or stream")
    return c_ints(what, "void*", Status.INVALID_VALUE, **{name: int(address)})[0] or None


def floats3(values: Any, name: str) -> Any:
    """Three floats as the C ``float[3]`` the library takes (one made ahead is passed as it
    is: the hot path of a caller passing the same values at every call)."""
    if type(values) is _Float3:
        return values
    v = np.asarray(values, dtype=np.float32).ravel()
    if v.shape != (3,):
        raise TinyFacesError(f"{name} must have 3 values, got {v.shape}")
    return (ctypes.c_float * 3)(*v.tolist())


class KernelLibrary:
    """The loaded kernel library. Pointers are ints (0 = NULL) or objects with ``.ptr`` /
    ``__cuda_array_interface__``; streams are ints, :class:`~..runtime.backends.cuda_device.Stream`
    objects (``.handle``) or None for the legacy default stream. An integer argument (or
    address) outside its C type's range raises :class:`KernelError` before the call, with the
    status the library gives that argument out of range (:func:`c_ints`), instead of reaching
    the library wrapped around.

    Attributes:
        path: the loaded .so.
        raw: the ``ctypes.CDLL`` with argument types set (returns raw ``tf_status`` ints).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.raw = ctypes.CDLL(str(self.path))
        except OSError as exc:
            raise BackendUnavailableError(f"cannot load the CUDA kernel library {self.path}: {exc}. "
                                          f"{_BUILD_HINT}") from exc
        missing = [name for name in _SIGNATURES if not hasattr(self.raw, name)]
        if missing:
            raise BackendUnavailableError(f"{self.path} lacks {', '.join(missing)}; it is not this "
                                          f"version's kernel library. {_BUILD_HINT}")
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(self.raw, name)
            fn.restype, fn.argtypes = restype, argtypes
        status = self.raw.tf_check_abi(ABI_VERSION, ctypes.sizeof(DecodeParams),
                                       ctypes.sizeof(NmsParams), ctypes.sizeof(NmsStats))
        if status != Status.SUCCESS:
            raise BackendUnavailableError(
                f"{self.path} was built for another ABI ({self.last_error_message()}); rebuild it. "
                f"{_BUILD_HINT}")

    # -- status -------------------------------------------------------------------------
    def status_string(self, status: int) -> str:
        """``tf_status_string`` ("unknown tf_status" for any value no ``tf_status`` has)."""
        status = operator.index(status)
        lo, hi = C_INT_RANGES["int"]
        return self.raw.tf_status_string(status if lo <= status <= hi else -1).decode()

    def last_error_message(self) -> str:
        """``tf_last_error_message`` of this thread."""
        return self.raw.tf_last_error_message().decode()

    def _check(self, status: int, what: str) -> None:
        if status == Status.SUCCESS:
            return
        code = Status(status) if status in Status._value2member_map_ else status
        cuda = self.raw.tf_last_cuda_error() if code == Status.CUDA_ERROR else 0
        raise KernelError(f"{what}: {self.status_string(status)}: {self.last_error_message()}",
                          code, cuda)

    def device_count(self) -> int:
        """CUDA devices visible to the library (raises :class:`KernelError` without a driver)."""
        count = ctypes.c_int(0)
        self._check(self.raw.tf_get_device_count(ctypes.byref(count)), "tf_get_device_count")
        return count.value

    # -- resize -------------------------------------------------------------------------
    def resize_workspace_size(self, src_height: int, src_width: int, dst_height: int,
                              dst_width: int) -> int:
        """Workspace bytes of :meth:`resize_normalize`."""
        what = "tf_resize_workspace_size"
        sizes = c_ints(what, "int", Status.INVALID_SIZE, src_height=src_height, src_width=src_width,
                       dst_height=dst_height, dst_width=dst_width)
        size = ctypes.c_size_t(0)
        self._check(self.raw.tf_resize_workspace_size(*sizes, ctypes.byref(size)), what)
        return size.value

    def resize_normalize(self, src: Any, src_height: int, src_width: int, dst: Any,
                         dst_height: int, dst_width: int, channel_scale: Any, channel_bias: Any,
                         workspace: Any, workspace_bytes: int, stream: Any = None,
                         src_row_bytes: int = 0) -> None:
        """Enqueues resize + normalise of an RGB uint8 device image into (1,3,h,w) float32."""
        what = "tf_resize_normalize"
        sh, sw, dh, dw = c_ints(what, "int", Status.INVALID_SIZE, src_height=src_height,
                                src_width=src_width, dst_height=dst_height, dst_width=dst_width)
        (row,) = c_ints(what, "int64_t", Status.INVALID_SIZE, src_row_bytes=src_row_bytes)
        (ws_bytes,) = c_ints(what, "size_t", Status.INVALID_VALUE, workspace_bytes=workspace_bytes)
        self._check(self.raw.tf_resize_normalize(
            _ptr(src, what, "src"), sh, sw, row, _ptr(dst, what, "dst"), dh, dw,
            floats3(channel_scale, "channel_scale"), floats3(channel_bias, "channel_bias"),
            _ptr(workspace, what, "workspace"), ws_bytes, _ptr(stream, what, "stream")), what)

    def resize_plan_size(self, src_height: int, src_width: int, dst_height: int,
                         dst_width: int) -> tuple[int, int]:
        """(plan bytes, workspace bytes) of :meth:`resize_plan` / :meth:`resize_normalize_planned`."""
        what = "tf_resize_plan_size"
        sizes = c_ints(what, "int", Status.INVALID_SIZE, src_height=src_height, src_width=src_width,
                       dst_height=dst_height, dst_width=dst_width)
        plan, workspace = ctypes.c_size_t(0), ctypes.c_size_t(0)
        self._check(self.raw.tf_resize_plan_size(*sizes, ctypes.byref(plan),
                                                 ctypes.byref(workspace)), what)
        return plan.value, workspace.value

    def resize_plan(self, src_height: int, src_width: int, dst_height: int, dst_width: int,
                    plan: Any, plan_bytes: int, stream: Any = None) -> None:
        """Enqueues the filter coefficients of one src -> dst size pair into ``plan``."""
        what = "tf_resize_plan"
        sizes = c_ints(what, "int", Status.INVALID_SIZE, src_height=src_height, src_width=src_width,
                       dst_height=dst_height, dst_width=dst_width)
        (nbytes,) = c_ints(what, "size_t", Status.INVALID_VALUE, plan_bytes=plan_bytes)
        self._check(self.raw.tf_resize_plan(*sizes, _ptr(plan, what, "plan"), nbytes,
                                            _ptr(stream, what, "stream")), what)

    def resize_normalize_planned(self, src: Any, src_height: int, src_width: int, dst: Any,
                                 dst_height: int, dst_width: int, channel_scale: Any,
                                 channel_bias: Any, plan: Any, plan_bytes: int, workspace: Any,
                                 workspace_bytes: int, stream: Any = None,
                                 src_row_bytes: int = 0) -> None:
        """:meth:`resize_normalize` with the coefficients of a :meth:`resize_plan` of the same
        four sizes (the same floats, bit for bit)."""
        what = "tf_resize_normalize_planned"
        sh, sw, dh, dw = c_ints(what, "int", Status.INVALID_SIZE, src_height=src_height,
                                src_width=src_width, dst_height=dst_height, dst_width=dst_width)
        (row,) = c_ints(what, "int64_t", Status.INVALID_SIZE, src_row_bytes=src_row_bytes)
        plan_n, ws_n = c_ints(what, "size_t", Status.INVALID_VALUE, plan_bytes=plan_bytes,
                              workspace_bytes=workspace_bytes)
        self._check(self.raw.tf_resize_normalize_planned(
            _ptr(src, what, "src"), sh, sw, row, _ptr(dst, what, "dst"), dh, dw,
            floats3(channel_scale, "channel_scale"), floats3(channel_bias, "channel_bias"),
            _ptr(plan, what, "plan"), plan_n, _ptr(workspace, what, "workspace"), ws_n,
            _ptr(stream, what, "stream")), what)

    # -- candidates + decode ----------------------------------------------------------------
    def candidates_size(self, capacity: int) -> int:
        """Bytes of a candidate buffer for ``capacity`` candidates."""
        what = "tf_candidates_size"
        (capacity,) = c_ints(what, "int64_t", Status.INVALID_CAPACITY, capacity=capacity)
        size = ctypes.c_size_t(0)
        self._check(self.raw.tf_candidates_size(capacity, ctypes.byref(size)), what)
        return size.value

    def candidates_reset(self, candidates: Any, stream: Any = None) -> None:
        """Enqueues zeroing of the candidate buffer's two counters (candidates, non-finite)."""
        what = "tf_candidates_reset"
        self._check(self.raw.tf_candidates_reset(_ptr(candidates, what, "candidates"),
                                                 _ptr(stream, what, "stream")), what)

    def decode_level(self, score_map: Any, height: int, width: int, params: DecodeParams,
                     key_base: int, candidates: Any, capacity: int, stream: Any = None) -> None:
        """Enqueues decoding of one (1,125,height,width) float32 device score map
        (``capacity``: the one the candidate buffer was sized with)."""
        what = "tf_decode_level"
        h, w = c_ints(what, "int", Status.INVALID_SIZE, height=height, width=width)
        (key_base,) = c_ints(what, "int64_t", Status.INVALID_SIZE, key_base=key_base)
        (capacity,) = c_ints(what, "int64_t", Status.INVALID_CAPACITY, capacity=capacity)
        self._check(self.raw.tf_decode_level(_ptr(score_map, what, "score_map"), h, w,
                                             ctypes.byref(params), key_base,
                                             _ptr(candidates, what, "candidates"), capacity,
                                             _ptr(stream, what, "stream")), what)

    # -- NMS ----------------------------------------------------------------------------
    def nms_workspace_size(self, max_candidates: int) -> int:
        """Workspace bytes of :meth:`nms` for up to ``max_candidates`` candidates."""
        what = "tf_nms_workspace_size"
        (max_candidates,) = c_ints(what, "int64_t", Status.INVALID_CAPACITY,
                                   max_candidates=max_candidates)
        size = ctypes.c_size_t(0)
        self._check(self.raw.tf_nms_workspace_size(max_candidates, ctypes.byref(size)), what)
        return size.value

    def nms(self, candidates: Any, capacity: int, params: NmsParams, max_candidates: int,
            workspace: Any, workspace_bytes: int, out_boxes: Any, out_stats: Any,
            stream: Any = None) -> None:
        """Enqueues sort + NMS; results (rows, :class:`NmsStats`) land in device memory."""
        what = "tf_nms"
        capacity, max_candidates = c_ints(what, "int64_t", Status.INVALID_CAPACITY, capacity=capacity,
                                          max_candidates=max_candidates)
        (ws_bytes,) = c_ints(what, "size_t", Status.INVALID_VALUE, workspace_bytes=workspace_bytes)
        self._check(self.raw.tf_nms(_ptr(candidates, what, "candidates"), capacity,
                                    ctypes.byref(params), max_candidates,
                                    _ptr(workspace, what, "workspace"), ws_bytes,
                                    _ptr(out_boxes, what, "out_boxes"),
                                    _ptr(out_stats, what, "out_stats"), _ptr(stream, what, "stream")),
                    what)

    def __repr__(self) -> str:
        return f"KernelLibrary({str(self.path)!r})"
