"""The model repository: every configured bundle loaded and warmed up, each with its own ONNX Runtime session.

Loading happens before the server listens (``python -m service``) or in the app's lifespan, and is all or
nothing: a missing or tampered bundle, two bundles holding the same model name, or a process that would pass the
memory budget refuse the start with a message naming the culprit. The batchers and pipelines are attached by
:class:`service.state.ServiceState` once the event loop runs.
"""

from __future__ import annotations

import logging
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

from service.batcher import Batcher
from service.engine import Engine
from service.manifest import BUNDLES_DIR, MANIFEST_FILE, BundleError, resolve_bundle
from service.pipeline import Pipeline
from service.settings import ALL_MODELS, Settings

log = logging.getLogger(__name__)

DEFAULT_ALIAS = "default"


class RepositoryError(RuntimeError):
    """The configured set of models cannot be served together (names clash, or it passes the memory budget)."""


def resident_mib() -> float:
    """This process's resident set size now, in MiB (peak RSS where ``/proc`` is missing, e.g. macOS)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def configured_bundles(settings: Settings, bundles_dir: Path = BUNDLES_DIR) -> list[Path]:
    """The bundle folders to serve, the default (``settings.bundle``) first, each once.

    ``settings.models`` lists more bundles by name under ``bundles/`` or by folder; ``all`` stands for every
    bundle under ``bundles/``.

    Raises:
        BundleError: a listed bundle does not exist.
    """
    wanted: list[str | Path] = [settings.bundle]
    for item in settings.models:
        if item == ALL_MODELS:
            wanted += sorted(p for p in bundles_dir.glob("*") if (p / MANIFEST_FILE).is_file())
        else:
            wanted.append(item)
    folders: list[Path] = []
    for item in wanted:
        folder = resolve_bundle(item, bundles_dir)
        if all(folder.resolve() != f.resolve() for f in folders):
            folders.append(folder)
    return folders


@dataclass
class ServedModel:
    """One model of the repository.

    Attributes:
        engine: its verified bundle's ONNX Runtime session.
        rss_mib: how much the process's resident memory grew while it was loaded and warmed up.
        batcher, pipeline: attached when the server starts (``None`` before).
    """

    engine: Engine
    rss_mib: float
    batcher: Batcher | None = None
    pipeline: Pipeline | None = None

    @property
    def name(self) -> str:
        return self.engine.manifest.name

    @property
    def ready(self) -> bool:
        return self.pipeline is not None


class ModelRepository:
    """The served models by manifest name; the first one is the default (also reachable as ``default``).

    Args:
        models: loaded models, the default first.

    Raises:
        RepositoryError: no model, or two with the same name.
    """

    def __init__(self, models: list[ServedModel]) -> None:
        if not models:
            raise RepositoryError("no model to serve")
        self._models: dict[str, ServedModel] = {}
        for model in models:
            if model.name == DEFAULT_ALIAS:
                raise RepositoryError(f"{model.engine.info.bundle_dir} names its model {DEFAULT_ALIAS!r}, the alias")
            if model.name in self._models:
                other = self._models[model.name].engine.info.bundle_dir
                raise RepositoryError(
                    f"bundles {other} and {model.engine.info.bundle_dir} both hold a model named {model.name!r}; "
                    "serve one of them"
                )
            self._models[model.name] = model
        self.default = models[0]

    @classmethod
    def load(cls, settings: Settings, bundles_dir: Path = BUNDLES_DIR) -> ModelRepository:
        """Load and warm up every configured bundle, checking the memory budget after each.

        Raises:
            BundleError: a bundle is missing, tampered with, or cannot be loaded.
            RepositoryError: names clash, or the process passed ``settings.memory_budget_mib``.
        """
        models: list[ServedModel] = []
        try:
            for folder in configured_bundles(settings, bundles_dir):
                before = resident_mib()
                engine = Engine(folder, **settings.engine_kwargs())
                models.append(ServedModel(engine, rss_mib=0.0))
                # One batch-1 run pays the first-run costs (allocations, kernel selection), so the first request
                # does not, and the memory measured below includes them.
                engine.warm_up()
                now = resident_mib()
                models[-1].rss_mib = now - before
                log.info("model %s: %.0f MiB resident (process %.0f MiB)", engine.manifest.name, now - before, now)
                budget = settings.memory_budget_mib
                if budget and now > budget:
                    costs = ", ".join(f"{m.name} {m.rss_mib:.0f} MiB" for m in models)
                    raise RepositoryError(
                        f"the process holds {now:.0f} MiB after loading {costs}: over the {budget} MiB memory budget "
                        "(SALIENCY_MEMORY_BUDGET_MIB); serve fewer models (SALIENCY_MODELS) or raise the budget"
                    )
            return cls(models)
        except (BundleError, RepositoryError):
            for model in models:
                model.engine.close()
            raise

    @property
    def names(self) -> list[str]:
        return list(self._models)

    @property
    def models(self) -> list[ServedModel]:
        return list(self._models.values())

    def find(self, name: str | None) -> ServedModel | None:
        """The model called ``name`` (``None`` or ``default``: the default), or ``None`` if there is none."""
        if name is None or name == DEFAULT_ALIAS:
            return self.default
        return self._models.get(name)

    def unknown_message(self, name: str) -> str:
        return f"model {name!r} is not served here; choose from {', '.join(self.names)} (or {DEFAULT_ALIAS!r})"

    def close(self) -> None:
        for model in self._models.values():
            model.engine.close()
