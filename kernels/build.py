"""``tf-build-kernels``: compiles the installed CUDA sources into libtinyfaces_kernels.so.

Runs the package's Makefile (one nvcc invocation for the library, then the C example) into
the user cache directory that :func:`~.binding.load_library` searches, or into ``--out``.
Usage examples: :data:`HELP_EPILOG` (``tf-build-kernels --help``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tinyfaces_trt.core.cli import (add_version_argument, shown, stderr_line, stdout_line,
                                    write_stdout)
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.core.files import discard_temporary, prepare_output_dir, removed_if_left_empty
from tinyfaces_trt.kernels.binding import (ENV_CACHE, ENV_LIBRARY, LIBRARY_NAME, cache_dir,
                                           library_candidates, package_dir)


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
    env = os.environ.get("NVCC")
    candidates = [env, shutil.which("nvcc")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), *DEFAULT_CUDA_HOMES):
        if home:
            candidates.append(str(Path(home) / "bin" / "nvcc"))
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    bad_env = f"$NVCC is set to {env}, which is not an executable file; " if env else ""
    raise TinyFacesError(
        f"{bad_env}nvcc (the CUDA compiler) was not found on the PATH, in $CUDA_HOME/bin or in "
        "/usr/local/cuda/bin. Install the CUDA toolkit (12.x or newer), or pass --nvcc PATH.")


#: What ``--arch native`` suggests where no GPU is visible (compute capability: GPUs).
ARCH_EXAMPLES = ("--arch 90 (H100/H200), --arch 80 (A100), --arch 86 (A10, RTX 30xx), "
                 "--arch 89 (L4, RTX 40xx)")


def native_archs() -> list[str]:
    """The distinct compute capabilities ("80", "90", ascending) of the GPUs nvidia-smi lists.

    Raises:
        TinyFacesError: no GPU is visible (no nvidia-smi, no driver, no device) or nvidia-smi's
            answer cannot be read; one line naming what to pass instead.
    """
    instead = f"pass the target GPUs' compute capabilities instead, e.g. {ARCH_EXAMPLES}"
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise TinyFacesError(f"--arch native: no GPU is visible (nvidia-smi not found); {instead}")
    try:
        ran = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise TinyFacesError(f"--arch native: cannot run {smi} ({exc}); {instead}") from None
    lines = [line.strip() for line in ran.stdout.splitlines() if line.strip()]
    if ran.returncode != 0 or not lines:
        said = " ".join((ran.stdout + ran.stderr).split())[:200] or f"exit {ran.returncode}"
        raise TinyFacesError(f"--arch native: no GPU is visible (nvidia-smi: {said}); {instead}")
    archs = set()
    for line in lines:
        cap = re.fullmatch(r"(\d+)\.(\d+)", line)
        if cap is None:
            raise TinyFacesError(f"--arch native: cannot read a compute capability from "
                                 f"nvidia-smi's {line!r}; {instead}")
        archs.add(int(cap[1] + cap[2]))
    return [str(a) for a in sorted(archs)]


def gencode_for(arch: str | None) -> str | None:
    """The Makefile's GENCODE for ``--arch``: None keeps the default (sm_80, sm_90, compute_90).

    "native" becomes this machine's GPUs' compute capabilities (:func:`native_archs`), so
    that the build record beside the library names real architectures.
    """
    if arch is None:
        return None
    if arch == "native":
        arch = ",".join(native_archs())
    flags = []
    for a in (x.strip() for x in arch.split(",") if x.strip()):
        if not a.isdigit() or int(a) < 50:
            raise TinyFacesError(f"--arch takes compute capabilities like 80,86,90 or 'native', got {a!r}")
        flags.append(f"-gencode arch=compute_{a},code=sm_{a}")
        last = a
    if not flags:
        raise TinyFacesError("--arch is empty")
    flags.append(f"-gencode arch=compute_{last},code=compute_{last}")  # PTX for newer GPUs
    return " ".join(flags)


def default_gencode() -> str:
    """The GENCODE a build without ``--arch`` uses: ``$GENCODE``, else the Makefile's."""
    if os.environ.get("GENCODE"):
        return os.environ["GENCODE"]
    text = (package_dir() / "Makefile").read_text()
    found = re.search(r"^GENCODE\s*\?=((?:.*\\\n)*.*)", text, flags=re.M)
    return " ".join(found[1].replace("\\\n", " ").split()) if found else ""


def arch_summary(gencode: str) -> str:
    """What ``gencode`` builds, e.g. "sm_80, sm_90 SASS + compute_90 PTX"."""
    sass: list[str] = []
    ptx: list[str] = []
    for codes in re.findall(r"code=\[?([\w,]+)", gencode):
        for code in codes.split(","):
            kind = sass if code.startswith("sm_") else ptx if code.startswith("compute_") else None
            if kind is not None and code not in kind:
                kind.append(code)
    if not sass and not ptx:
        return f"GENCODE {gencode!r}"
    return " + ".join(part for part in (f"{', '.join(sass)} SASS" if sass else "",
                                        f"{', '.join(ptx)} PTX" if ptx else "") if part)


def nvcc_version(nvcc: Path) -> str:
    """The ``release X.Y`` line of ``nvcc --version`` (or "unknown version")."""
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown version"
    lines = [line for line in out.splitlines() if "release" in line]
    return lines[-1].strip() if lines else "unknown version"


#: Characters that, besides whitespace, the Makefile refuses in the build folder's path (its
#: BUILD_FORBIDDEN): make splits paths at whitespace, reads ':' and '%' in target names and
#: '$' as a reference, and its recipes pass the path to the shell unquoted.
MAKE_UNSAFE_CHARACTERS = ":;&|<>()`'\"\\%$*?["


def make_can_use(folder: Path) -> bool:
    """Whether make can build in or from ``folder`` (no whitespace nor any of
    :data:`MAKE_UNSAFE_CHARACTERS` in its path)."""
    return not any(c.isspace() or c in MAKE_UNSAFE_CHARACTERS for c in str(folder))


def check_make_path(folder: Path, label: str, advice: str = "choose another folder") -> None:
    """Refuses a folder that the Makefile cannot build in (:func:`make_can_use`: make would
    write elsewhere, e.g. into ./dir for "out dir", or fail half-way).

    Raises:
        TinyFacesError: one line naming ``label``, the path and the characters, then ``advice``.
    """
    text = str(folder)
    if not make_can_use(folder):
        listed = " ".join(MAKE_UNSAFE_CHARACTERS)
        raise TinyFacesError(f"{label}: make cannot use a folder whose path ({text!r}) holds "
                             f"whitespace or any of {listed}; {advice}")


#: What the Makefile's ``lib`` and ``example`` targets read from the package's kernels folder.
BUILD_SOURCES = ("Makefile", "include", "src", "examples")

#: The folder inside the output folder that holds a copy of :data:`BUILD_SOURCES` when the
#: package's own path is one make cannot use (e.g. a virtual environment in "My Projects").
STAGED_SOURCES = ".sources"


@contextlib.contextmanager
def staged_sources(source: Path, out_dir: Path) -> Iterator[Path]:
    """Yields ``source`` when make can build from it, else a fresh copy of its
    :data:`BUILD_SOURCES` in ``out_dir``/:data:`STAGED_SOURCES`, removed again at the end
    (also after a failed build). The copy keeps the files' times, so an unchanged package
    rebuilds nothing, and not their modes (a read-only package gives a removable copy).

    Raises:
        TinyFacesError: the copy could not be made (one line; nothing of it is left).
    """
    if make_can_use(source):
        yield source
        return
    staged = out_dir / STAGED_SOURCES
    discard_temporary(staged)  # what a killed build left (what stays makes the copy fail)
    try:
        for name in BUILD_SOURCES:
            top = source / name
            files = sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]
            for file in files:
                if "__pycache__" in file.relative_to(source).parts:
                    continue
                copy = staged / file.relative_to(source)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, copy)
                stat = file.stat()
                os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    except OSError as exc:
        discard_temporary(staged)
        raise TinyFacesError(f"cannot copy the kernel sources into {staged} (the package's "
                             f"path holds a character make cannot use): "
                             f"{exc.strerror or exc}") from None
    try:
        yield staged
    finally:
        discard_temporary(staged)


def prepare_out_dir(out: str | os.PathLike[str] | None = None) -> Path:
    """Creates the output folder (``out``, else :func:`~.binding.cache_dir`) and returns it.

    Raises:
        TinyFacesError: its path holds a character make cannot handle (:func:`check_make_path`;
            nothing is created), or it cannot be created or written (one line naming the folder).
    """
    folder = Path(out).expanduser().resolve() if out else cache_dir()
    label = f"--out {out}" if out else f"the kernel cache folder {folder}"
    check_make_path(folder, label, "choose another folder" if out else
                    f"set ${ENV_CACHE} elsewhere or pass --out DIR")
    return prepare_output_dir(folder, label)


def check_library(lib: Path, stamp: Path) -> None:
    """Checks that the build wrote ``lib``: an ELF shared library (through its .so -> .so.N
    link) not older than the build record ``stamp`` (the Makefile's ``.lib-config``).

    Raises:
        TinyFacesError: one line saying what is wrong (e.g. an nvcc that wrote nothing).
    """
    target = lib.resolve()
    problem = None
    if not target.is_file():
        problem = (f"{lib} is a link to the missing {target}" if lib.is_symlink() else
                   f"{lib} is missing")
    else:
        with open(target, "rb") as f:
            head = f.read(18)
        little = head[5:6] != b"\x02"
        e_type = int.from_bytes(head[16:18], "little" if little else "big") if len(head) == 18 else 0
        if not head:
            problem = f"{target} is empty"
        elif head[:4] != b"\x7fELF" or e_type != 3:  # 3: ET_DYN
            problem = f"{target} is not an ELF shared library"
        elif stamp.is_file() and target.stat().st_mtime_ns < stamp.stat().st_mtime_ns:
            problem = f"{target} was not rewritten (it is older than {stamp.name})"
    if problem:
        raise TinyFacesError(f"the build ended without error but produced no library: {problem}; "
                             "is --nvcc / $NVCC the CUDA toolkit's nvcc?")


def shadowing_note(lib: Path) -> str | None:
    """Why :func:`~.binding.load_library` (no path) would not load ``lib`` though another
    library comes first in :func:`~.binding.library_candidates`, and what to do; None when it
    loads ``lib`` or ``lib`` is not among the places it searches."""
    candidates = library_candidates()
    if not any(p.resolve() == lib.resolve() for p in candidates):
        return None
    use = f"set {ENV_LIBRARY}={lib}"
    env = os.environ.get(ENV_LIBRARY)
    if env and not Path(env).expanduser().is_file():
        return (f"${ENV_LIBRARY} is set to {env}, which does not exist, so load_library() "
                f"fails; {use} or unset it")
    for p in candidates:
        if p.resolve() == lib.resolve():
            return None
        if p.is_file():
            if env and p == candidates[0]:
                return (f"load_library() will load {p}, which ${ENV_LIBRARY} names; {use} to use "
                        "this build")
            return (f"load_library() will load {p}, not this build (it comes first in its search "
                    f"order); {use} or remove {p} to use this build")
    return None


def build(out: str | os.PathLike[str] | None = None, nvcc: str | None = None,
          arch: str | None = None, example: bool = True, verbose: bool = True) -> Path:
    """Builds the library (and the C example) and returns the library's path.

    Warns on stderr (also when not ``verbose``) when :func:`~.binding.load_library` would
    load another library first (:func:`shadowing_note`).

    Args:
        out: output folder (default :func:`~.binding.cache_dir`).
        nvcc: the compiler (default: :func:`find_nvcc`).
        arch: comma-separated compute capabilities, or "native" (the GPUs nvidia-smi lists);
            None = Makefile default.
        example: also build ``decode_nms_demo``.
        verbose: print progress and the compiler commands.

    Raises:
        TinyFacesError: ``--arch`` is bad or "native" without a visible GPU, the output folder
            cannot be created or its path holds a character make cannot handle (a package
            folder whose path does is built from a copy of its sources in the output folder:
            :func:`staged_sources`), nvcc or make missing, or the build failed (with its
            output) or wrote no library. A folder this call created is removed again while
            still empty.
    """
    gencode = gencode_for(arch)
    with removed_if_left_empty(out if out else cache_dir()):
        return _build_into(prepare_out_dir(out), nvcc, gencode, example, verbose)


def _build_into(out_dir: Path, nvcc: str | None, gencode: str | None, example: bool,
                verbose: bool) -> Path:
    """:func:`build` once the architectures are known and the folder exists."""
    compiler = find_nvcc(nvcc)
    make = shutil.which("make")
    if make is None:
        raise TinyFacesError("`make` is needed to build the kernels and was not found on the PATH")
    archs = arch_summary(gencode or default_gencode())
    variables = [f"BUILD={out_dir}", f"NVCC={compiler}"] + ([f"GENCODE={gencode}"] if gencode else [])
    targets = ["lib"] + (["example"] if example else [])

    def say(msg: str) -> None:
        if verbose:
            stdout_line(f"tf-build-kernels: {msg}")  # (a closed pipe ends no build)

    say(f"nvcc {compiler} ({nvcc_version(compiler)})")
    with staged_sources(package_dir(), out_dir) as source:
        cmd = [make, "-f", str(source / "Makefile"), *variables, *targets]
        say(f"sources {source}" + ("" if source == package_dir() else
                                    f" (a copy of {package_dir()}, whose path make cannot use)"))
        say(f"building {archs} into {out_dir} (a minute or two) ...")
        start = time.perf_counter()
        output: list[str] = []
        with subprocess.Popen(cmd, cwd=str(out_dir), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                output.append(line)
                if verbose:
                    write_stdout(shown(line, sys.stdout))
        if proc.returncode != 0:
            if verbose:  # the compiler's output was just printed: do not repeat it
                raise TinyFacesError(f"building the CUDA kernels failed (exit {proc.returncode}); "
                                     "the compiler's messages are above")
            raise TinyFacesError(f"building the CUDA kernels failed (exit {proc.returncode}):\n"
                                 f"{''.join(output)}".rstrip())
    lib = out_dir / LIBRARY_NAME
    check_library(lib, out_dir / ".lib-config")
    say(f"done in {time.perf_counter() - start:.0f} s: {lib} (built for {archs})")
    note = shadowing_note(lib)
    if note:
        stderr_line(f"tf-build-kernels: warning: {note}")
    elif not any(p.resolve() == lib.resolve() for p in library_candidates()):
        say(f"load it with {ENV_LIBRARY}={lib} (or load_library(path))")
    return lib


HELP_EPILOG = """\
Runs the package Makefile (nvcc builds the library, then the C example
decode_nms_demo) and names the architectures it builds for.

The Python binding's load_library() looks for the library in this order:
$TINYFACES_KERNELS_LIB, kernels/build/ next to the package (make -C kernels),
then the default output folder. When it would load another library than the
one just built, tf-build-kernels says so. After --out DIR elsewhere, load it
with TINYFACES_KERNELS_LIB=DIR/{lib}.

From C or C++: include {include}/tinyfaces_kernels.h and link with
-L<out> -ltinyfaces_kernels; the program then loads {lib}.N (the
SONAME: ship that file), which needs the NVIDIA driver, libstdc++, libgcc_s
and a glibc as recent as this machine's. The C example: {examples}/decode_nms_demo.c.

Examples:
  tf-build-kernels                  # sm_80 + sm_90 SASS and compute_90 PTX, into the cache
  tf-build-kernels --arch native    # the GPU(s) nvidia-smi lists (an error without one)
  tf-build-kernels --arch 86 --out ./build
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``tf-build-kernels`` argument parser (plain-text help with examples)."""
    parser = argparse.ArgumentParser(
        prog="tf-build-kernels",
        description=f"Compile the installed CUDA sources into {LIBRARY_NAME}.",
        epilog=HELP_EPILOG.format(lib=LIBRARY_NAME, include=package_dir() / "include",
                                  examples=package_dir() / "examples"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", metavar="DIR", help=f"output folder (default: {cache_dir()})")
    parser.add_argument("--nvcc", metavar="PATH",
                        help="path to nvcc (default: $NVCC, then the PATH, $CUDA_HOME/bin, "
                             "/usr/local/cuda/bin)")
    parser.add_argument("--arch", metavar="LIST",
                        help="compute capabilities, e.g. 80,86,90 (the last one also as PTX), "
                             "or 'native': those of the GPUs nvidia-smi lists "
                             "(default: sm_80 + sm_90 SASS and compute_90 PTX)")
    parser.add_argument("--no-example", action="store_true",
                        help="skip the C example (default: build it)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print errors and warnings only (default: progress and compiler "
                             "commands)")
    add_version_argument(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit code (0 built, 1 error, 2 bad command line)."""
    args = build_parser().parse_args(argv)
    try:
        build(args.out, args.nvcc, args.arch, example=not args.no_example, verbose=not args.quiet)
    except (TinyFacesError, OSError) as exc:  # OSError: e.g. the disk filling up during make
        stderr_line(f"tf-build-kernels: error: {exc}")
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
