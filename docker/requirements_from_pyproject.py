"""Print the requirements pyproject.toml declares (base, the named extras and the build backend), one a line.

The Dockerfiles install these in a layer of their own before the project's code is copied in, so an edit to the
code rebuilds only the last, small layer (the project itself, installed with --no-deps). An extra that
pyproject.toml does not declare is reported on stderr and skipped, like pip's own warning for an unknown extra,
so an image keeps building while an extra is being renamed. Standard library only (runs before any install).

    python requirements_from_pyproject.py [--extras faiss,minilm] [pyproject.toml]
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(project: dict, build_requires: list[str], extras: list[str]) -> list[str]:
    """Base dependencies, then each wanted extra's; an extra naming the project itself (`pkg[a,b]`) is expanded."""
    own_name = canonical(project["name"])
    optional = project.get("optional-dependencies", {})
    wanted, seen, out = list(extras), set(), list(build_requires)
    pending = list(project.get("dependencies", []))
    while True:
        for requirement in pending:
            match = NAME.match(requirement)
            if match and canonical(match.group(1)) == own_name:
                wanted += [e.strip() for e in (match.group(2) or "").split(",") if e.strip()]
            elif requirement not in out:
                out.append(requirement)
        pending = []
        while wanted and not pending:
            extra = wanted.pop(0)
            if extra in seen:
                continue
            seen.add(extra)
            if extra not in optional:
                print(
                    f"requirements_from_pyproject: {project['name']} has no extra '{extra}', skipped", file=sys.stderr
                )
                continue
            pending = list(optional[extra])
        if not pending:
            return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", nargs="?", default="pyproject.toml")
    parser.add_argument("--extras", default="", help="comma-separated extras to include")
    args = parser.parse_args(argv)
    data = tomllib.loads(Path(args.pyproject).read_text(encoding="utf-8"))
    extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    build_requires = data.get("build-system", {}).get("requires", [])
    print("\n".join(requirements(data["project"], build_requires, extras)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
