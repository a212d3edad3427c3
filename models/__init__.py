"""PyTorch models: backbones, attention modules, the papers' architectures, and a registry.

Importing the package registers every architecture; use ``build_model(name)`` and ``list_models()``.
"""

from models import arn as arn  # registers models
from models import attention_baselines as attention_baselines  # registers models
from models import class_net as class_net  # registers models
from models import cosal as cosal  # registers models
from models import picanet  # noqa: F401  (registers models)
from models.outputs import AttentionGeometry, ModelOutput
from models.registry import build_model, list_models, model_paper, register_model

__all__ = ["AttentionGeometry", "ModelOutput", "build_model", "list_models", "model_paper", "register_model"]
