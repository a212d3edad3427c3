"""Load a training checkpoint (the format ``training/train.py`` writes) into an eval-mode model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import build_model
from service.manifest import sha256_file
from training.transforms import Preprocess


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint and what the bundle manifest records about its source.

    Attributes:
        model: the registered model in eval mode with the checkpoint's weights.
        model_name: registry name (``models.build_model``).
        model_kwargs: keyword overrides the model was built with.
        config: the training config embedded in the checkpoint (``TrainConfig.to_dict()``).
        preprocess: the training preprocessing, which the service must repeat exactly.
        epochs_completed: 1-based epoch of the weights (the number ``log.csv`` shows), or None.
        path: the checkpoint file.
        sha256: its digest.
    """

    model: nn.Module
    model_name: str
    model_kwargs: dict[str, Any]
    config: dict[str, Any]
    preprocess: Preprocess
    epochs_completed: int | None
    path: Path
    sha256: str

    @property
    def training_data(self) -> list[str]:
        """Names of the training sets, e.g. ``ECSSD_train`` (the split file's stem, else the images folder)."""
        names = []
        for spec in self.config.get("data", {}).get("train", []):
            split = spec.get("split")
            names.append(Path(split).stem if split else str(Path(spec["images"]).parent))
        return names


def preprocess_from_config(config: dict[str, Any]) -> Preprocess:
    """The ``Preprocess`` stored in a checkpoint's config (lists in YAML/JSON become tuples)."""
    raw = dict(config.get("preprocess") or {})
    for key in ("mean", "std"):
        if key in raw:
            raw[key] = tuple(float(v) for v in raw[key])
    return Preprocess(**raw)


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Rebuild the model of a training checkpoint.

    Raises:
        FileNotFoundError: the file does not exist.
        KeyError: the file lacks the keys ``training/train.py`` writes (``model``, ``model_name``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    missing = [k for k in ("model", "model_name") if k not in state]
    if missing:
        raise KeyError(f"{path} is not a training checkpoint: missing {missing} (see training/train.py)")
    kwargs = dict(state.get("model_kwargs") or {})
    model = build_model(state["model_name"], **kwargs)
    model.load_state_dict(state["model"])
    model.eval()
    config = dict(state.get("config") or {})
    epoch = state.get("epoch")
    return LoadedCheckpoint(
        model=model,
        model_name=state["model_name"],
        model_kwargs=kwargs,
        config=config,
        preprocess=preprocess_from_config(config),
        epochs_completed=None if epoch is None else int(epoch) + 1,
        path=path,
        sha256=sha256_file(path),
    )
