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


# ---------------------------------------------------------------------------------------------
# Strong baselines (issue 26; parameter structure only, like the transformers above).


def _conv_in(cin: int, cout: int, kernel: int, bias: bool = True) -> nn.Sequential:
    """A 3D convolution followed by an affine instance norm (LeakyReLU has no weights)."""
    return nn.Sequential(
        nn.Conv3d(cin, cout, kernel, bias=bias), nn.InstanceNorm3d(cout, affine=True)
    )


class ResNetDBlock(nn.Module):
    """ResNet-D basic block (He et al. 2019, "Bag of tricks"): two 3x3x3 biased conv + norm;
    when the stride or the width changes, the skip is an average pool then a bias-free 1x1x1
    conv + norm (a pool alone has no weights, so only a width change adds parameters)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = _conv_in(cin, cout, 3)
        self.conv2 = _conv_in(cout, cout, 3)
        self.skip = _conv_in(cin, cout, 1, bias=False) if cin != cout else None


def nnunet_pooling(
    spacing: Sequence[float], patch: Sequence[int], min_edge: int = 4
) -> list[tuple[int, ...]]:
    """Per-stage strides by nnU-Net v2's topology rule (``get_pool_and_conv_props``; stage 0
    has stride 1): while some axis can be pooled, pool by 2 every axis whose feature map is at
    least ``2 * min_edge`` and whose current spacing is under twice the finest spacing among
    those axes; a lone axis needs at least ``3 * min_edge``. Spacing doubles with each pooling.
    """
    size, space = [float(s) for s in patch], [float(s) for s in spacing]
    strides = [tuple(1 for _ in patch)]
    while True:
        axes = [a for a in range(len(size)) if size[a] >= 2 * min_edge]
        if not axes:
            break
        finest = min(space[a] for a in axes)
        axes = [a for a in axes if space[a] / finest < 2]
        if len(axes) == 1 and size[axes[0]] < 3 * min_edge:
            break
        strides.append(tuple(2 if a in axes else 1 for a in range(len(size))))
        for a in axes:
            size[a], space[a] = math.ceil(size[a] / 2), space[a] * 2
    return strides


def nnunet_widths(stages: int, base: int = 32, cap: int = 320) -> tuple[int, ...]:
    """nnU-Net's widths: ``base * 2**stage``, capped at 320 in 3D."""
    return tuple(min(cap, base * 2**s) for s in range(stages))


SEED_STRIDES = nnunet_pooling((8, 8, 8), (32, 256, 256))
"""The seed's 32x256x256 patch at 8 nm isotropic voxels under nnU-Net's rule."""


class ResEncUNet(nn.Module):
    """nnU-Net's residual-encoder UNet (Isensee et al. 2024, "nnU-Net Revisited"), 3D.

    A 3x3x3 stem conv + norm to ``widths[0]``; encoder stage ``s``: ``blocks[s]`` ResNet-D
    blocks at ``widths[s]`` (the first one strided and widening); decoder, from the bottleneck
    up: a transposed conv (kernel = stride, biased) to the skip's width, concatenation, one
    3x3x3 conv + norm back to the skip's width, and a 1x1x1 biased segmentation conv per stage
    (nnU-Net builds one per decoder stage for deep supervision; ``heads="last"``: only the
    full-resolution one, which is all a network without deep supervision uses).
    """

    def __init__(
        self,
        strides: Sequence[Sequence[int]] = SEED_STRIDES,
        blocks: Sequence[int] = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6),
        in_channels: int = 1,
        classes: int = 14,
        heads: str = "last",
    ) -> None:
        super().__init__()
        # ResEnc planners: encoder blocks 1, 3, 4, 6, 6, ... truncated to the number of stages
        widths = nnunet_widths(len(strides))
        blocks = blocks[: len(strides)]
        self.stem = _conv_in(in_channels, widths[0], 3)
        self.encoder = nn.ModuleList(
            nn.Sequential(*(ResNetDBlock(cin if i == 0 else cout, cout) for i in range(n)))
            for cin, cout, n in zip((widths[0], *widths[:-1]), widths, blocks, strict=True)
        )
        ups, convs, segs = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for below, skip, stride in zip(widths[:0:-1], widths[-2::-1], strides[:0:-1], strict=True):
            ups.append(nn.ConvTranspose3d(below, skip, tuple(stride), stride=tuple(stride)))
            convs.append(_conv_in(2 * skip, skip, 3))
            segs.append(nn.Conv3d(skip, classes, 1))
        self.ups, self.convs = ups, convs
        self.segs = segs if heads == "all" else segs[-1:]


class MedNeXtBlockRef(nn.Module):
    """MedNeXt block (Roy et al. 2023, fig. 1): depthwise k^3 conv (biased) -> group norm with
    one group per channel -> 1x1x1 expansion by ``ratio`` -> GELU -> 1x1x1 compression to
    ``cout``. ``resample``: ``"down"`` (strided depthwise conv, width doubled) or ``"up"``
    (transposed depthwise conv, width halved), each with a 1x1x1 (transposed) biased residual
    projection; ``None``: residual identity."""

    def __init__(self, c: int, ratio: int, kernel: int, resample: str | None = None) -> None:
        super().__init__()
        cout = {None: c, "down": 2 * c, "up": c // 2}[resample]
        depthwise = nn.ConvTranspose3d if resample == "up" else nn.Conv3d
        self.dw = depthwise(c, c, kernel, groups=c)
        self.norm = nn.GroupNorm(c, c)
        self.expand = nn.Conv3d(c, ratio * c, 1)
        self.compress = nn.Conv3d(ratio * c, cout, 1)
        projection = nn.ConvTranspose3d if resample == "up" else nn.Conv3d
        self.res = projection(c, cout, 1) if resample else None


class MedNeXtRef(nn.Module):
    """MedNeXt (Roy et al. 2023): a 1x1x1 stem to ``c``; level ``i`` of ``len(down)``: ``down[i]``
    blocks at ``c * 2**i`` (ratio ``enc[i]``) then a down block; a bottleneck of ``bottleneck``
    blocks; level ``i`` up: an up block (ratio ``dec[i]``) and ``up[i]`` blocks; a 1x1x1
    (transposed) biased output conv. Defaults: MedNeXt-L (the paper's table 1)."""

    def __init__(
        self,
        kernel: int = 3,
        c: int = 32,
        enc: Sequence[int] = (3, 4, 8, 8),
        dec: Sequence[int] = (8, 8, 4, 3),
        bottleneck_ratio: int = 8,
        down: Sequence[int] = (3, 4, 8, 8),
        bottleneck: int = 8,
        up: Sequence[int] = (8, 8, 4, 3),
        in_channels: int = 1,
        classes: int = 14,
    ) -> None:
        super().__init__()
        levels = len(down)
        self.stem = nn.Conv3d(in_channels, c, 1)
        blocks: list[nn.Module] = []
        for i in range(levels):
            width = c * 2**i
            blocks += [MedNeXtBlockRef(width, enc[i], kernel) for _ in range(down[i])]
            blocks.append(MedNeXtBlockRef(width, enc[i], kernel, "down"))
        width = c * 2**levels
        blocks += [MedNeXtBlockRef(width, bottleneck_ratio, kernel) for _ in range(bottleneck)]
        for i in range(levels):
            blocks.append(MedNeXtBlockRef(width, dec[i], kernel, "up"))
            width //= 2
            blocks += [MedNeXtBlockRef(width, dec[i], kernel) for _ in range(up[i])]
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.ConvTranspose3d(c, classes, 1)


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
        ("resenc", "3d"): ("nnU-Net ResEnc L, 7 stages", ResEncUNet, {}),
        ("mednext", "3d"): ("MedNeXt-L, kernel 3", MedNeXtRef, {}),
        ("cosem", "3d"): ("COSEM setup04", CosemSetup04, {}),
    }


def reference_count(name: str, dim: str) -> int:
    """Parameters of the seed architecture of ``(name, dim)`` (built on the meta device)."""
    _, cls, kwargs = reference_models()[(name, dim)]
    with torch.device("meta"):
        return count(cls(**kwargs))
