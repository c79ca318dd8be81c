"""``tf-build-kernels``: compiles the installed CUDA sources into libtinyfaces_kernels.so.

Runs the package's Makefile (one nvcc invocation for the library, then the C example) into
the user cache directory that :func:`~.binding.load_library` searches, or into ``--out``.
Usage examples: :data:`HELP_EPILOG` (``tf-build-kernels --help``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tinyfaces_trt.core.cli import add_version_argument
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.core.files import prepare_output_dir
from tinyfaces_trt.kernels.binding import LIBRARY_NAME, cache_dir, package_dir


DEFAULT_CUDA_HOMES = ("/usr/local/cuda",)


def find_nvcc(explicit: str | None = None) -> Path:
    """nvcc from ``explicit``, ``$NVCC``, the PATH, ``$CUDA_HOME/bin`` or /usr/local/cuda/bin.

    Raises:
        TinyFacesError: none found (the message says how to get one).
    """
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise TinyFacesError(f"nvcc not found at {explicit}")
    candidates = [os.environ.get("NVCC"), shutil.which("nvcc")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), *DEFAULT_CUDA_HOMES):
        if home:
            candidates.append(str(Path(home) / "bin" / "nvcc"))
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    raise TinyFacesError(
        "nvcc (the CUDA compiler) was not found on the PATH, in $CUDA_HOME/bin or in "
        "/usr/local/cuda/bin. Install the CUDA toolkit (12.x or newer), or pass --nvcc PATH.")


def gencode_for(arch: str | None) -> str | None:
    """The Makefile's GENCODE for ``--arch``: None keeps the default (sm_80, sm_90, compute_90)."""
    if arch is None:
        return None
    if arch == "native":
        return "-arch=native"
    flags = []
    for a in (x.strip() for x in arch.split(",") if x.strip()):
        if not a.isdigit() or int(a) < 50:
            raise TinyFacesError(f"--arch takes compute capabilities like 80,86,90 or 'native', got {a!r}")
        flags.append(f"-gencode arch=compute_{a},code=sm_{a}")
    if not flags:
        raise TinyFacesError("--arch is empty")
    last = arch.split(",")[-1].strip()
    flags.append(f"-gencode arch=compute_{last},code=compute_{last}")  # PTX for newer GPUs
    return " ".join(flags)


def nvcc_version(nvcc: Path) -> str:
    """The ``release X.Y`` line of ``nvcc --version`` (or "unknown version")."""
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown version"
    lines = [line for line in out.splitlines() if "release" in line]
    return lines[-1].strip() if lines else "unknown version"


def prepare_out_dir(out: str | os.PathLike[str] | None = None) -> Path:
    """Creates the output folder (``out``, else :func:`~.binding.cache_dir`) and returns it.

    Raises:
        TinyFacesError: it cannot be created or written (one line naming the folder).
    """
    folder = Path(out).expanduser().resolve() if out else cache_dir()
    return prepare_output_dir(folder, f"--out {out}" if out else f"the kernel cache folder {folder}")


def build(out: str | os.PathLike[str] | None = None, nvcc: str | None = None,
          arch: str | None = None, example: bool = True, verbose: bool = True) -> Path:
    """Builds the library (and the C example) and returns the library's path.

    Args:
        out: output folder (default :func:`~.binding.cache_dir`).
        nvcc: the compiler (default: :func:`find_nvcc`).
        arch: comma-separated compute capabilities, or "native"; None = Makefile default.
        example: also build ``decode_nms_demo``.
        verbose: print progress and the compiler commands.

    Raises:
        TinyFacesError: the output folder cannot be created, nvcc or make missing, or the
            build failed (with its output).
    """
    out_dir = prepare_out_dir(out)
    compiler = find_nvcc(nvcc)
    make = shutil.which("make")
    if make is None:
        raise TinyFacesError("`make` is needed to build the kernels and was not found on the PATH")
    source = package_dir()
    gencode = gencode_for(arch)
    variables = [f"BUILD={out_dir}", f"NVCC={compiler}"] + ([f"GENCODE={gencode}"] if gencode else [])
    targets = ["lib"] + (["example"] if example else [])
    cmd = [make, "-f", str(source / "Makefile"), *variables, *targets]

    def say(msg: str) -> None:
        if verbose:
            print(f"tf-build-kernels: {msg}", flush=True)

    say(f"nvcc {compiler} ({nvcc_version(compiler)})")
    say(f"sources {source}")
    say(f"building into {out_dir} (a minute or two) ...")
    start = time.perf_counter()
    output: list[str] = []
    with subprocess.Popen(cmd, cwd=str(out_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if verbose:
                print(line, end="", flush=True)
    if proc.returncode != 0:
        if verbose:  # the compiler's output was just printed: do not repeat it
            raise TinyFacesError(f"building the CUDA kernels failed (exit {proc.returncode}); "
                                 "the compiler's messages are above")
        raise TinyFacesError(f"building the CUDA kernels failed (exit {proc.returncode}):\n"
                             f"{''.join(output)}".rstrip())
    lib = out_dir / LIBRARY_NAME
    say(f"done in {time.perf_counter() - start:.0f} s: {lib}")
    if out is not None and out_dir != cache_dir():
        say(f"load it with TINYFACES_KERNELS_LIB={lib} (or load_library(path))")
    return lib


HELP_EPILOG = """\
Runs the package Makefile (nvcc builds the library, then the C example
decode_nms_demo). The default output folder is where the Python binding
looks for the library; after --out DIR, load it with
TINYFACES_KERNELS_LIB=DIR/{lib}.

Examples:
  tf-build-kernels                  # sm_80 + sm_90 SASS and compute_90 PTX, into the cache
  tf-build-kernels --arch native    # only the GPU(s) of this machine
  tf-build-kernels --arch 86 --out ./build
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``tf-build-kernels`` argument parser (plain-text help with examples)."""
    parser = argparse.ArgumentParser(
        prog="tf-build-kernels",
        description=f"Compile the installed CUDA sources into {LIBRARY_NAME}.",
        epilog=HELP_EPILOG.format(lib=LIBRARY_NAME),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", metavar="DIR", help=f"output folder (default: {cache_dir()})")
    parser.add_argument("--nvcc", metavar="PATH",
                        help="path to nvcc (default: $NVCC, then the PATH, $CUDA_HOME/bin, "
                             "/usr/local/cuda/bin)")
    parser.add_argument("--arch", metavar="LIST",
                        help="compute capabilities, e.g. 80,86,90, or 'native' "
                             "(default: sm_80 + sm_90 SASS and compute_90 PTX)")
    parser.add_argument("--no-example", action="store_true",
                        help="skip the C example (default: build it)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print errors only (default: progress and compiler commands)")
    add_version_argument(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit code (0 built, 1 error, 2 bad command line)."""
    args = build_parser().parse_args(argv)
    try:
        build(args.out, args.nvcc, args.arch, example=not args.no_example, verbose=not args.quiet)
    except (TinyFacesError, OSError) as exc:  # OSError: e.g. the disk filling up during make
        print(f"tf-build-kernels: error: {exc}", file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
