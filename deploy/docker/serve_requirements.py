"""Write the pip requirements of the serving image from ``pyproject.toml``, so the image has one source of versions.

The images install the project's base dependencies plus the ``serve`` extra (no torch). With ``--gpu`` the CPU
``onnxruntime`` wheel is replaced by the ``gpu`` extra (``onnxruntime-gpu``): both wheels install the same
``onnxruntime`` package, so having both would leave whichever pip installed last.

Usage (in a Dockerfile): ``python serve_requirements.py pyproject.toml [--gpu] > requirements.txt``
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_name(requirement: str) -> str:
    """The normalized distribution name of a PEP 508 requirement (``uvicorn[standard]==1`` -> ``uvicorn``).

    Args:
        requirement: one requirement string as written in pyproject.toml.

    Returns:
        The name, lower-cased, with runs of ``-_.`` folded to ``-`` (PEP 503).
    """
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def serve_requirements(pyproject: Path, gpu: bool = False) -> list[str]:
    """Base dependencies + the ``serve`` extra, with ``onnxruntime`` swapped for the ``gpu`` extra when asked.

    Args:
        pyproject: path to the project's pyproject.toml.
        gpu: replace ``onnxruntime`` by the ``gpu`` extra's packages.

    Returns:
        Requirement strings in pyproject order, without duplicates by name.
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = [*project["dependencies"], *extras["serve"]]
    if gpu:
        requirements = [r for r in requirements if requirement_name(r) != "onnxruntime"] + extras["gpu"]
    unique: dict[str, str] = {}
    for requirement in requirements:
        unique.setdefault(requirement_name(requirement), requirement)
    return list(unique.values())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path, help="path to pyproject.toml")
    parser.add_argument("--gpu", action="store_true", help="onnxruntime-gpu instead of onnxruntime")
    args = parser.parse_args(argv)
    sys.stdout.write("\n".join(serve_requirements(args.pyproject, gpu=args.gpu)) + "\n")


if __name__ == "__main__":
    main()
