"""Independent reference definitions of the seed's architectures, in plain ``torch.nn``.

Written from the architectures' descriptions (SPEC §5, the CellMap challenge toolbox's model
documentation, the Swin / ViT / TransUNet / ViT-V-Net papers), not from cellseg's code, so
that ``test_seed_sizes.py`` can check that cellseg's ``seed`` presets, built from MONAI/timm
blocks, have the seed's size. These modules exist to hold the right parameters: the
convolutional ones (UNet, ResNet generator) have a forward, the transformer ones only the
parameter structure (a transformer block's parameters do not depend on how attention is
computed). Normalisation layers are instance norms with affine parameters unless a source
says otherwise. Build them under ``torch.device("meta")`` to count without allocating.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn


def _conv(dims: int) -> type[nn.Module]:
    return nn.Conv2d if dims == 2 else nn.Conv3d


def _conv_t(dims: int) -> type[nn.Module]:
    return nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d


def _inorm(dims: int, channels: int, affine: bool = True) -> nn.Module:
    cls = nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d
    return cls(channels, affine=affine)


def count(module: nn.Module) -> int:
    """Number of parameters (learned position embeddings included)."""
    return sum(p.numel() for p in module.parameters())


class ConvUnit(nn.Sequential):
    """``n`` times: 3x3(x3) convolution without bias -> instance norm (affine) -> ReLU."""

    def __init__(self, dims: int, cin: int, cout: int, n: int = 2, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [
                _conv(dims)(cin if i == 0 else cout, cout, 3, padding=1, bias=False),
                _inorm(dims, cout),
                nn.ReLU(inplace=True),
            ]
            if dropout:
                layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


# ---------------------------------------------------------------------------------------------
# UNet: the classic layout (Ronneberger et al. 2015; the toolbox's UNet_2D / UNet_3D with
# trilinear=False), instance norm and dropout 0.2.


class ClassicUNet(nn.Module):
    """64-128-256-512-1024 channels, two 3x3 convs per level, max-pool down, transposed-conv up.

    Up step: a transposed convolution (kernel 2, stride 2) halving the channels, concatenation
    with the skip, two 3x3 convolutions; a 1x1 convolution to the classes.

    Shapes: ``(B, in_channels, *S)`` -> ``(B, classes, *S)``, each size a multiple of 16.
    """

    def __init__(
        self,
        dims: int,
        in_channels: int = 1,
        classes: int = 14,
        widths: Sequence[int] = (64, 128, 256, 512, 1024),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.dims = dims
        self.enc = nn.ModuleList([ConvUnit(dims, in_channels, widths[0], dropout=dropout)])
        self.enc.extend(
            ConvUnit(dims, a, b, dropout=dropout) for a, b in itertools.pairwise(widths)
        )
        self.ups = nn.ModuleList(_conv_t(dims)(b, b // 2, 2, stride=2) for b in widths[:0:-1])
        self.dec = nn.ModuleList(
            ConvUnit(dims, a // 2 + b, b, dropout=dropout)
            for a, b in zip(widths[:0:-1], widths[-2::-1], strict=True)
        )
        self.out = _conv(dims)(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """See the class docstring."""
        pool = nn.functional.max_pool2d if self.dims == 2 else nn.functional.max_pool3d
        skips = []
        for i, unit in enumerate(self.enc):
            x = unit(x if i == 0 else pool(x, 2))
            skips.append(x)
        for up, unit, skip in zip(self.ups, self.dec, skips[-2::-1], strict=True):
            x = unit(torch.cat([skip, up(x)], dim=1))
        return self.out(x)


# ---------------------------------------------------------------------------------------------
# ResNet: the image-to-image ResNet generator (Johnson et al. 2016; the toolbox's ResNet):
# 7x7 conv to 64 filters, two stride-2 3x3 convs doubling the channels, six residual blocks at
# 256 channels, two stride-2 transposed 3x3 convs halving them, 7x7 conv to the classes.
# Instance norm without affine parameters and biased convolutions (the toolbox's defaults).


class ResidualBlock(nn.Module):
    """x + (3x3 conv -> norm -> ReLU -> 3x3 conv -> norm), reflection padding."""

    def __init__(self, dims: int, channels: int) -> None:
        super().__init__()
        conv = _conv(dims)
        self.body = nn.Sequential(
            conv(channels, channels, 3, padding=1, padding_mode="reflect"),
            _inorm(dims, channels, affine=False),
            nn.ReLU(inplace=True),
            conv(channels, channels, 3, padding=1, padding_mode="reflect"),
            _inorm(dims, channels, affine=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` -> ``(B, C, *S)``."""
        return x + self.body(x)


class ResnetGenerator(nn.Sequential):
    """The generator; ``(B, in_channels, *S)`` -> ``(B, classes, *S)``, sizes multiples of 4."""

    def __init__(
        self,
        dims: int,
        in_channels: int = 1,
        classes: int = 14,
        ngf: int = 64,
        downsamplings: int = 2,
        blocks: int = 6,
    ) -> None:
        conv, conv_t = _conv(dims), _conv_t(dims)
        layers: list[nn.Module] = [
            conv(in_channels, ngf, 7, padding=3, padding_mode="reflect"),
            _inorm(dims, ngf, affine=False),
            nn.ReLU(inplace=True),
        ]
        c = ngf
        for _ in range(downsamplings):
            layers += [conv(c, 2 * c, 3, stride=2, padding=1)]
            layers += [_inorm(dims, 2 * c, affine=False), nn.ReLU(inplace=True)]
            c *= 2
        layers += [ResidualBlock(dims, c) for _ in range(blocks)]
        for _ in range(downsamplings):
            layers += [conv_t(c, c // 2, 3, stride=2, padding=1, output_padding=1)]
            layers += [_inorm(dims, c // 2, affine=False), nn.ReLU(inplace=True)]
            c //= 2
        layers += [conv(c, classes, 7, padding=3, padding_mode="reflect")]
        super().__init__(*layers)


# ---------------------------------------------------------------------------------------------
# Transformers (parameter structure only).


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: LN, q/k/v + output projection (biased), LN, MLP (biased).

    ``rel_pos_entries`` adds a relative-position bias table of that many entries per head
    (Swin's window attention).
    """

    def __init__(self, dim: int, heads: int, mlp: int, rel_pos_entries: int = 0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if rel_pos_entries:
            self.rel_pos = nn.Parameter(torch.zeros(rel_pos_entries, heads))
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp)
        self.fc2 = nn.Linear(mlp, dim)


class SwinT(nn.Module):
    """Swin-T (Liu et al. 2021): embed 96, depths 2-2-6-2, heads 3-6-12-24, MLP ratio 4.

    Patch embedding: a ``patch``-sized strided convolution + LN. Stages of widths C, 2C, 4C,
    8C; between stages a patch merging (LN over the 2^dims concatenated neighbours, then a
    bias-free linear map to twice the width); a final LN. Each block has a relative-position
    bias table of prod(2w - 1) entries per head (w: window). ``classes``: the ImageNet head.
    Features: C, 2C, 4C, 8C at strides p, 2p, 4p, 8p (p = patch).
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        patch: Sequence[int],
        window: Sequence[int],
        embed: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        heads: Sequence[int] = (3, 6, 12, 24),
        classes: int = 0,
    ) -> None:
        super().__init__()
        self.patch_embed = _conv(dims)(in_channels, embed, tuple(patch), stride=tuple(patch))
        self.patch_norm = nn.LayerNorm(embed)
        entries = math.prod(2 * w - 1 for w in window)
        self.stages = nn.ModuleList()
        self.mergings = nn.ModuleList()
        for i, (depth, h) in enumerate(zip(depths, heads, strict=True)):
            c = embed * 2**i
            if i:
                self.mergings.append(
                    nn.Sequential(
                        nn.LayerNorm(2**dims * c // 2), nn.Linear(2**dims * c // 2, c, bias=False)
                    )
                )
            self.stages.append(
                nn.ModuleList(TransformerBlock(c, h, 4 * c, entries) for _ in range(depth))
            )
        self.channels = [embed * 2**i for i in range(len(depths))]
        self.norm = nn.LayerNorm(self.channels[-1])
        self.head = nn.Linear(self.channels[-1], classes) if classes else None


class ViTEncoder(nn.Module):
    """ViT (Dosovitskiy et al. 2021): patch-embedding convolution, learned position embedding,
    ``depth`` pre-norm blocks, final LN; optional class token and classification head.
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        tokens: int,
        patch: int,
        hidden: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp: int = 3072,
        cls_token: bool = False,
        classes: int = 0,
    ) -> None:
        super().__init__()
        self.patch_embed = _conv(dims)(in_channels, hidden, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden)) if cls_token else None
        self.pos = nn.Parameter(torch.zeros(1, tokens + int(cls_token), hidden))
        self.blocks = nn.ModuleList(TransformerBlock(hidden, heads, mlp) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, classes) if classes else None


# ---------------------------------------------------------------------------------------------
# Segmentation networks around the transformers.


class UpStep(nn.Module):
    """x2 upsampling (no weights), optional skip concatenation, two :class:`ConvUnit` convs."""

    def __init__(self, dims: int, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.convs = ConvUnit(dims, cin + cskip, cout)


class SwinTUNet(nn.Module):
    """Swin-T under a UNet decoder whose widths are the skips' widths.

    From the last stage (8C at stride 8p): three x2 steps concatenating the 4C, 2C and C
    features (widths 4C, 2C, C), then skip-free x2 steps halving the width (minimum 16) until
    the patch size is undone (2D, patch 4: 48, 24; 3D, patch 2x4x4: 48, 24), then a 1x1
    convolution to the classes.
    """

    def __init__(
        self,
        dims: int,
        in_channels: int = 1,
        classes: int = 14,
        patch: Sequence[int] = (4, 4),
        window: Sequence[int] = (7, 7),
    ) -> None:
        super().__init__()
        self.encoder = SwinT(dims, in_channels, patch, window)
        c = self.encoder.channels
        steps = [UpStep(dims, c[3], c[2], c[2]), UpStep(dims, c[2], c[1], c[1])]
        steps.append(UpStep(dims, c[1], c[0], c[0]))
        width = c[0]
        for _ in range(int(math.log2(max(patch)))):
            steps.append(UpStep(dims, width, 0, max(16, width // 2)))
            width = max(16, width // 2)
        self.decoder = nn.ModuleList(steps)
        self.out = _conv(dims)(width, classes, 1)


class ViTDecoderCup(nn.Module):
    """ViT-B/16 with TransUNet's decoder (Chen et al. 2021, "ViT-B_16", no skips), 2D.

    The 16x16 token grid -> 3x3 conv to 512 channels (norm, ReLU) -> four x2 steps of widths
    256-128-64-16 (two 3x3 conv-norm-ReLU each) -> 3x3 conv to the classes.
    """

    def __init__(
        self,
        in_channels: int = 1,
        classes: int = 14,
        image: int = 256,
        decoder: Sequence[int] = (256, 128, 64, 16),
        head_channels: int = 512,
    ) -> None:
        super().__init__()
        self.encoder = ViTEncoder(2, in_channels, (image // 16) ** 2, 16)
        self.conv_more = ConvUnit(2, 768, head_channels, n=1)
        ins = (head_channels, *decoder[:-1])
        self.decoder = nn.ModuleList(UpStep(2, a, 0, b) for a, b in zip(ins, decoder, strict=True))
        self.out = nn.Conv2d(decoder[-1], classes, 3, padding=1)


class ViTVNet(nn.Module):
    """ViT-V-Net (Chen et al. 2021) with the CellMap toolbox's configuration, 3D.

    CNN encoder (biased 3x3x3 convs with ReLU, no norm): two convs to 16 channels, max-pool,
    two to 32, max-pool, two to 32 (1/4 resolution). ViT on it: 8x8x8 patches to hidden 252,
    12 layers, 12 heads, MLP 3072, learned position embedding, final LN. Decoder: 3x3x3 conv
    252 -> 512 (norm, ReLU), five x2 steps of widths 96-48-32-32-16 with skips of 32, 32, 32,
    32 and 16 channels (the 1/4 features pooled to 1/16 and 1/8, then the 1/4, 1/2 and full
    resolution features), a 3x3x3 convolution to the classes.
    """

    def __init__(
        self,
        in_channels: int = 1,
        classes: int = 14,
        image: Sequence[int] = (32, 256, 256),
        hidden: int = 252,
        mlp: int = 3072,
        heads: int = 12,
        layers: int = 12,
    ) -> None:
        super().__init__()

        def biased_convs(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv3d(cin, cout, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv3d(cout, cout, 3, padding=1),
                nn.ReLU(inplace=True),
            )

        self.cnn = nn.ModuleList(
            [biased_convs(in_channels, 16), biased_convs(16, 32), biased_convs(32, 32)]
        )
        tokens = math.prod(s // 32 for s in image)
        self.vit = ViTEncoder(3, 32, tokens, 8, hidden, layers, heads, mlp)
        self.conv_more = ConvUnit(3, hidden, 512, n=1)
        widths, skips = (96, 48, 32, 32, 16), (32, 32, 32, 32, 16)
        ins = (512, *widths[:-1])
        self.decoder = nn.ModuleList(
            UpStep(3, a, s, b) for a, s, b in zip(ins, skips, widths, strict=True)
        )
        self.out = nn.Conv3d(16, classes, 3, padding=1)


class CosemSetup04(nn.Module):
    """COSEM's setup04 (Heinrich et al. 2021, Nature 599, "Whole-cell organelle segmentation
    in volume electron microscopy", Methods; the published network's settings): a 4-level
    UNet with 12, 72, 432, 2592 features down and 72, 72, 432, 2592 up, two 3x3x3 valid
    convolutions per level, max-pooling by 2, 3, 3, each upsampling a nearest one followed by
    a 1x1x1 convolution, then one more such upsampling at 72 (to 4 nm), two 3x3x3 convolutions
    at 72 and a 1x1x1 head. Parameter structure only."""

    def __init__(self, in_channels: int = 1, classes: int = 14) -> None:
        super().__init__()
        down, up = [12, 72, 432, 2592], [72, 72, 432, 2592]
        self.left = nn.ModuleList(
            nn.Sequential(nn.Conv3d(cin, w, 3), nn.Conv3d(w, w, 3))
            for cin, w in zip([in_channels, *down[:-1]], down, strict=True)
        )
        self.up = nn.ModuleList(nn.Conv3d(up[i + 1], up[i], 1) for i in range(3))
        self.right = nn.ModuleList(
            nn.Sequential(nn.Conv3d(up[i] + down[i], up[i], 3), nn.Conv3d(up[i], up[i], 3))
            for i in range(3)
        )
        self.to_4nm = nn.Conv3d(up[0], up[0], 1)
        self.final = nn.Sequential(nn.Conv3d(up[0], 72, 3), nn.Conv3d(72, 72, 3))
        self.head = nn.Conv3d(72, classes, 1)


# ---------------------------------------------------------------------------------------------


def reference_models() -> dict[tuple[str, str], tuple[str, type[nn.Module], dict]]:
    """``(name, dim) -> (description, class, kwargs)`` of the seed architecture, 1 -> 14."""
    return {
        ("unet", "2d"): ("classic UNet 64-1024", ClassicUNet, {"dims": 2}),
        ("resnet", "2d"): ("ResNet generator 64/2/6", ResnetGenerator, {"dims": 2}),
        ("swin", "2d"): ("Swin-T + UNet decoder", SwinTUNet, {"dims": 2}),
        ("vit", "2d"): ("ViT-B/16 + TransUNet cup", ViTDecoderCup, {}),
        ("unet", "3d"): ("classic UNet 64-1024", ClassicUNet, {"dims": 3}),
        ("resnet", "3d"): ("ResNet generator 64/2/6", ResnetGenerator, {"dims": 3}),
        ("swin", "3d"): (
            "Swin-T (2x4x4, 4x7x7) + UNet decoder",
            SwinTUNet,
            {"dims": 3, "patch": (2, 4, 4), "window": (4, 7, 7)},
        ),
        ("vit", "3d"): ("ViT-V-Net (toolbox config)", ViTVNet, {}),
        ("cosem", "3d"): ("COSEM setup04", CosemSetup04, {}),
    }


def reference_count(name: str, dim: str) -> int:
    """Parameters of the seed architecture of ``(name, dim)`` (built on the meta device)."""
    _, cls, kwargs = reference_models()[(name, dim)]
    with torch.device("meta"):
        return count(cls(**kwargs))
