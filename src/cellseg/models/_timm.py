"""Building a 2D :class:`~cellseg.models.decoder.TimmUNet` from a timm encoder name + kwargs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from cellseg.errors import CellsegError
from cellseg.models.decoder import TimmUNet


def timm_unet_from_config(
    label: str, in_channels: int, out_channels: int, config: Mapping[str, Any], fixed_size: bool
) -> nn.Module:
    """:func:`create_timm_unet` from a 2D timm entry's resolved preset (the registry's config).

    Args:
        fixed_size: build the encoder for exactly ``config["input_shape"]`` (Swin, ViT).
    """
    return create_timm_unet(
        label,
        in_channels,
        out_channels,
        encoder=config["encoder"],
        encoder_kwargs=config["encoder_kwargs"],
        out_indices=config["out_indices"],
        decoder_channels=config["decoder_channels"],
        decoder_dropout=config["decoder_dropout"],
        pretrained=config["pretrained"],
        img_size=config["input_shape"] if fixed_size else None,
    )


def create_timm_unet(
    label: str,
    in_channels: int,
    out_channels: int,
    *,
    encoder: str,
    encoder_kwargs: Mapping[str, Any],
    out_indices: Sequence[int],
    decoder_channels: Sequence[int] | None,
    decoder_dropout: float,
    pretrained: bool,
    img_size: Sequence[int] | None = None,
) -> nn.Module:
    """timm ``features_only`` encoder + the shared decoder.

    Args:
        label: ``"<name> <dim>"`` for error messages.
        in_channels: image channels; timm adapts the first layer (``in_chans``), also for
            pretrained weights (it sums the RGB filters).
        encoder: a timm model name, e.g. ``"swin_tiny_patch4_window7_224"``; ``encoder_kwargs``
            override its architecture (``depths``, ``embed_dim``, ...).
        pretrained: load the timm weights (network access or a local HF cache needed); off by
            default, never downloaded implicitly.
        img_size: fixed input size ``(H, W)`` for transformers whose position embedding or
            attention masks depend on it (Swin, ViT).

    Raises:
        CellsegError: unknown timm name or kwarg, or pretrained weights not obtainable.
    """
    import timm  # imported here so `cellseg --help` does not pay for it

    kwargs = dict(encoder_kwargs)
    if img_size is not None:
        kwargs["img_size"] = tuple(img_size)
    try:
        if not timm.is_model(encoder):
            raise CellsegError(f"model {label}: {encoder!r} is not a timm model name")
        unknown = _unknown_kwargs(encoder, kwargs)
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}")
        net = timm.create_model(
            encoder,
            pretrained=bool(pretrained),
            features_only=True,
            out_indices=tuple(out_indices),
            in_chans=in_channels,
            **kwargs,
        )
    except CellsegError:
        raise
    except TypeError as error:
        raise CellsegError(
            f"model {label}: timm {encoder!r} rejected encoder_kwargs {kwargs}: {error}"
        ) from error
    except Exception as error:
        if not pretrained:
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CellsegError(
            f"model {label}: could not load pretrained timm weights for {encoder!r} "
            f"({type(error).__name__}: {first[:200]}); run once with network access to fill "
            "the Hugging Face cache, or set pretrained: false"
        ) from error
    return TimmUNet(net, out_channels, decoder_channels, decoder_dropout)


def _unknown_kwargs(encoder: str, kwargs: Mapping[str, Any]) -> list[str]:
    """The ``kwargs`` that the timm model class of ``encoder`` does not name in its
    ``__init__``. Some classes take ``**kwargs`` and drop what they do not know (timm 1.0.22's
    ``SwinTransformer``), so a misspelt setting would be ignored without a word; the class is
    built on the meta device (no memory, no weights) to read its signature."""
    import inspect

    import timm
    import torch

    with torch.device("meta"):
        model_class = type(timm.create_model(encoder, pretrained=False))
    parameters = inspect.signature(model_class.__init__).parameters
    named = {
        name
        for name, parameter in parameters.items()
        if parameter.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }
    return sorted(key for key in kwargs if key not in named)
