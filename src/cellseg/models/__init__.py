"""The 8-model registry: UNet, ResNet, Swin, ViT in 2D and 3D, from timm and MONAI.

Usage::

    from cellseg.models import build_model, input_rule, list_models
    model = build_model("swin", "3d", preset="demo", drop_rate=0.0)
    rule = input_rule("swin", "3d", preset="demo")   # rule.default == (32, 64, 64)

Registration works because this module imports every family module (as timm does).
"""

from __future__ import annotations

from cellseg.models import (  # noqa: F401  (registers the models)
    cosem,
    mednext,
    resenc,
    resnet,
    swin,
    unet,
    vit,
)
from cellseg.models._factory import (
    SegmentationModel,
    build_model,
    count_parameters,
    create_model,
)
from cellseg.models._registry import (
    DIMS,
    PRESETS,
    InputRule,
    ModelEntry,
    check_input_shape,
    get_entry,
    input_rule,
    is_model,
    list_models,
    model_config,
    register_model,
)

__all__ = [
    "DIMS",
    "PRESETS",
    "InputRule",
    "ModelEntry",
    "SegmentationModel",
    "build_model",
    "check_input_shape",
    "count_parameters",
    "create_model",
    "get_entry",
    "input_rule",
    "is_model",
    "list_models",
    "model_config",
    "register_model",
]
