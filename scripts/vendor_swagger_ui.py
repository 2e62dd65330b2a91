"""Copy the Swagger UI dist files the explorer serves from the pinned ``swagger-ui-py``.

The Lambda serves them from ``chalicelib/swagger/static`` (no CDN: the explorer works
offline, under ``chalice local`` and in the deployment package). They are committed so
``chalice package`` needs no build step; after bumping ``swagger-ui-py`` in
``requirements-dev.txt``, run ``.venv/bin/python scripts/vendor_swagger_ui.py`` and commit.
``tests/functional/test_openapi.py`` fails while the copies differ from the package.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Final

#: Only what the page loads (no editor, no ES bundles, no source maps), plus the licence.
VENDORED_FILES: Final = ("swagger-ui-bundle.js", "swagger-ui.css", "LICENSE")
TARGET: Final = Path(__file__).resolve().parents[1] / "chalicelib" / "swagger" / "static"


def package_static_dir() -> Path:
    """Where the installed ``swagger_ui`` package keeps the Swagger UI dist."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or spec.origin is None:
        raise SystemExit("swagger-ui-py is not installed: run `make venv`")
    return Path(spec.origin).parent / "static"


def vendored_name(name: str) -> str:
    """The licence keeps its origin in its name next to our own files."""
    return "LICENSE.swagger-ui" if name == "LICENSE" else name


def main() -> int:
    source = package_static_dir()
    TARGET.mkdir(parents=True, exist_ok=True)
    for name in VENDORED_FILES:
        shutil.copyfile(source / name, TARGET / vendored_name(name))
        print(f"{source / name} -> {TARGET / vendored_name(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
