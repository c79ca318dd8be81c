"""Every example command line in a command's ``--help`` is one the command accepts: parsed by
its parser and passed by the checks it makes before any work (an example that exited 2 once
stood in tf-serve's help)."""

from __future__ import annotations

import importlib
import shlex

import pytest

#: (command, module, its parser function, its argument check or None)
CLIS = [
    ("tf-detect", "tinyfaces_trt.cli.detect", "build_parser", "_check_arguments"),
    ("tf-anonymize", "tinyfaces_trt.anonymize.cli", "build_parser", "_check_arguments"),
    ("tf-serve", "tinyfaces_trt.scaleout.cli_serve", "build_parser", "_check_arguments"),
    ("tf-export", "tinyfaces_trt.export.cli_export", "build_parser", "_check_args"),
    ("tf-parity", "tinyfaces_trt.parity.cli", "build_parser", None),
    ("tf-eval", "tinyfaces_trt.wider.cli", "_parser", None),
    ("tf-build-kernels", "tinyfaces_trt.kernels.build", "build_parser", None),
]


def help_examples(command: str, help_text: str) -> list[list[str]]:
    """The example command lines of ``help_text`` (lines of the epilog's two-space indent that
    start with ``command``), without the command and any trailing ``# comment``."""
    examples = []
    for line in help_text.splitlines():
        if line.startswith(f"  {command} "):
            examples.append(shlex.split(line, comments=True)[1:])
    return examples


def test_examples_are_found_with_their_comments_cut() -> None:
    text = ("usage: tf-x [-h]\n  tf-x a b   # note\nsee tf-x --help\n  tf-xy c\n"
            "                        tf-x --help)\n  tf-x 'a b'\n")
    assert help_examples("tf-x", text) == [["a", "b"], ["a b"]]


@pytest.mark.parametrize("command, module, parser_name, check_name", CLIS, ids=[c[0] for c in CLIS])
def test_every_help_example_is_accepted(command, module, parser_name, check_name) -> None:
    cli = importlib.import_module(module)
    parser = getattr(cli, parser_name)()
    examples = help_examples(command, parser.format_help())
    assert len(examples) >= 2, f"{command} --help shows fewer than two examples"
    for argv in examples:
        try:
            args = parser.parse_args(argv)
            if check_name:
                getattr(cli, check_name)(parser, args)
        except SystemExit as exc:
            pytest.fail(f"{command} {shlex.join(argv)} (an example of its --help) exits {exc.code}")
