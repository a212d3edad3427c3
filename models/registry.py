"""A timm-style model registry: ``@register_model`` on factories, ``build_model(name, **overrides)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
_PAPERS: dict[str, str] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(name: str, paper: str) -> Callable[[F], F]:
    """Register a factory under ``name``; ``paper`` names the paper the architecture comes from."""

    def decorate(factory: F) -> F:
        if name in _FACTORIES:
            raise ValueError(f"model {name!r} is registered twice")
        _FACTORIES[name] = factory
        _PAPERS[name] = paper
        return factory

    return decorate


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_FACTORIES)


def model_paper(name: str) -> str:
    """The paper a registered model implements."""
    _check_known(name)
    return _PAPERS[name]


def build_model(name: str, **overrides: object) -> nn.Module:
    """Build a registered model; ``overrides`` replace the factory's keyword defaults.

    Raises:
        KeyError: the name is not registered (the message lists the known names).
    """
    _check_known(name)
    return _FACTORIES[name](**overrides)


def _check_known(name: str) -> None:
    if name not in _FACTORIES:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
