"""``python -m service [--host H] [--port P] [--bundle NAME_OR_DIR] [--models LIST]``: run the server (uvicorn,
one worker).

Flags override the ``SALIENCY_*`` environment. A missing or tampered bundle, models that clash or pass the memory
budget, or invalid settings exit with status 2 and a one-line reason before anything listens.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from service.app import create_app
from service.logs import configure_logging
from service.manifest import BundleError
from service.repository import ModelRepository, RepositoryError
from service.server import serve
from service.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description="Run the saliency service.")
    parser.add_argument("--host", help="listen address (env SALIENCY_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (env SALIENCY_PORT, default 8000)")
    parser.add_argument(
        "--bundle",
        help="the default model: a bundle name under bundles/ or a folder (env SALIENCY_BUNDLE, default default)",
    )
    parser.add_argument(
        "--models",
        help="more models beside it: comma list of bundle names or folders, 'all' (the default) or '' for none "
        "(env SALIENCY_MODELS)",
    )
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_json, settings.log_level)
    try:
        repository = ModelRepository.load(settings)
    except (BundleError, RepositoryError) as exc:
        print(f"error: cannot load the models: {exc}", file=sys.stderr)
        return 2
    serve(create_app(settings, repository=repository), settings)
    logging.getLogger(__name__).info("server exited")
    return 0


if __name__ == "__main__":
    sys.exit(main())
