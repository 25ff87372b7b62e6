"""Where a run's weights start: ``init`` (scratch, imagenet or a checkpoint file).

``scratch`` is the library's initialisation. ``{checkpoint: PATH}`` and ``imagenet`` give a
*source* state dict, which :func:`load_matching` copies into the network tensor by tensor: a
tensor whose name and shape match is loaded; a network tensor the source lacks, or has with
another shape (an output head for another number of classes), keeps its initialisation
(*re-initialised*); a source tensor the network lacks is *ignored*. The report of all three
goes to ``train.log``. A checkpoint file may be

* a cellseg run's ``best.pt`` or one of its ``checkpoints/*.pt`` (it must be a run of the same
  ``{model}_{dim}``),
* a COSEM weights file as ``cellmap_models`` publishes them (``{"model": {...}}`` with the
  ``architecture.`` / ``chain.`` names that ``cellmap_models.pytorch.cosem.load_model``
  renames; nothing is downloaded),
* any state dict, of the :class:`~cellseg.models.SegmentationModel` (names ``net.*``) or of the
  bare library network (names without ``net.``), bare or under ``"model"`` / ``"state_dict"``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cellseg.errors import CellsegError
from cellseg.models import SegmentationModel, get_entry, list_models
from cellseg.models._timm import create_timm_unet
from cellseg.training.checkpoint import load_checkpoint

CELLSEG_FORMATS: frozenset[str] = frozenset({"cellseg-model-1", "cellseg-checkpoint-1"})
"""``format`` of the files a cellseg run writes (``best.pt``, ``checkpoints/*.pt``)."""

MIN_LOADED_FRACTION = 0.5
"""A checkpoint must fill at least this share of the network's parameters (elements): less is
another architecture whose names happen to overlap, not a start worth the name. ImageNet
weights have no floor (a trimmed encoder, e.g. the seed ResNet's, takes only its stem), but see
:data:`MIN_PRETRAINED_FRACTION`."""

MIN_PRETRAINED_FRACTION = 0.25
"""A start from pretrained weights that fills less than this share of the network's parameters
(elements) is logged with a warning and reported as starting essentially from scratch: the seed
``resnet_2d`` takes 0.04 % from ImageNet (its trimmed encoder keeps only the stem's weights),
Swin-T and ViT-B/16 80-97 %."""


def share(fraction: float) -> str:
    """A share of parameters as a percentage: one decimal, two below 0.1 % (0.04 %, not 0.0 %)."""
    return f"{fraction:.1%}" if fraction >= 0.001 or fraction == 0 else f"{fraction:.2%}"


@dataclass
class InitReport:
    """What :func:`load_matching` did, tensor by tensor (state-dict names of the network).

    Attributes:
        source: what the weights came from (a path, or ``imagenet: <timm name>``).
        loaded: network tensors copied from the source.
        reinitialised: network tensors left at their initialisation, with why (absent from
            the source, or the source's shape).
        ignored: source tensors the network has no tensor of that name for.
        loaded_fraction: share of the network's parameter elements that were loaded.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    loaded_fraction: float = 0.0

    @property
    def pretrained(self) -> bool:
        """Whether the start fills at least :data:`MIN_PRETRAINED_FRACTION` of the parameters."""
        return self.loaded_fraction >= MIN_PRETRAINED_FRACTION

    def warning(self, key: str) -> str | None:
        """The log's warning for a start that loads too little to count as pretrained."""
        if self.pretrained:
            return None
        return (
            f"warning: init from {self.source} loads {share(self.loaded_fraction)} of {key}'s "
            f"parameters ({len(self.loaded)} tensors), below {MIN_PRETRAINED_FRACTION:.0%}: the "
            "run starts essentially from scratch (train_summary.json and the summary say so); "
            "use a preset whose encoder the weights fill, or name it a scratch run"
        )

    def describe(self) -> str:
        """The log's lines: counts, then every name under its heading."""
        head = (
            f"init from {self.source}: {len(self.loaded)} tensors loaded "
            f"({share(self.loaded_fraction)} of the parameters), {len(self.reinitialised)} "
            f"re-initialised, {len(self.ignored)} ignored"
        )
        parts = [head]
        for title, names in (
            ("loaded", self.loaded),
            ("re-initialised", self.reinitialised),
            ("ignored", self.ignored),
        ):
            if names:
                parts.append(f"  {title}: " + ", ".join(names))
        return "\n".join(parts)


def load_matching(
    network: nn.Module,
    state: Mapping[str, Any],
    source: str,
    skip: Mapping[str, str] | None = None,
) -> InitReport:
    """Copy every tensor of ``state`` whose name and shape match into ``network``.

    Args:
        network: the freshly built network; its tensors not in ``state`` stay as they are.
        state: name -> tensor, in the network's naming (see :func:`source_state`).
        source: for the report.
        skip: network tensors not to load although the source has them, with why (a COSEM
            head, whose channels are COSEM's classes, not cellseg's).
    """
    own = network.state_dict()
    report = InitReport(source)
    matched: dict[str, torch.Tensor] = {}
    for name, tensor in own.items():
        theirs = state.get(name)
        if skip and name in skip:
            report.reinitialised.append(f"{name} ({skip[name]})")
        elif not isinstance(theirs, torch.Tensor):
            report.reinitialised.append(f"{name} (not in the source)")
        elif tuple(theirs.shape) != tuple(tensor.shape):
            report.reinitialised.append(
                f"{name} (source {tuple(theirs.shape)}, network {tuple(tensor.shape)})"
            )
        else:
            matched[name] = theirs
            report.loaded.append(name)
    report.ignored = [name for name in state if name not in own]
    network.load_state_dict(matched, strict=False)
    parameters = dict(network.named_parameters())
    total = sum(p.numel() for p in parameters.values())
    loaded = sum(parameters[name].numel() for name in matched if name in parameters)
    report.loaded_fraction = loaded / total if total else 0.0
    return report


def file_digest(path: Path | str) -> str:
    """SHA-256 of a file's bytes (the init file a run started from, recorded to resume)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


COSEM_HEAD: dict[str, str] = {
    f"net.prediction_head.{p}": "a COSEM head: its channels are COSEM's classes, not cellseg's"
    for p in ("weight", "bias")
}
"""The tensors of a COSEM file that are never loaded (the head, trained for other classes)."""


def source_state(
    path: Path | str, model_key: str, where: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict of an ``init.checkpoint`` file in the naming of a
    :class:`~cellseg.models.SegmentationModel` (``net.*``), and the tensors not to load from
    it with why (:data:`COSEM_HEAD` for a COSEM file, else none).

    Args:
        model_key: ``{model}_{dim}`` of the run (a cellseg checkpoint must be of the same).
        where: what errors name (the config source and run).

    Raises:
        CellsegError: the file is missing or unreadable, not a state dict, or a cellseg
            checkpoint of another model (one line each, naming the key and the fix).
    """
    path = Path(path)
    if not path.is_file():
        raise CellsegError(
            f"{where}: init.checkpoint {path} does not exist; put the weights file there "
            "(docs/training.md, 'Where the weights start') or set init: scratch"
        )
    content = load_checkpoint(path)
    if isinstance(content, Mapping) and content.get("format") in CELLSEG_FORMATS:
        settings = content.get("settings") or {}
        trained = f"{settings.get('model')}_{settings.get('dim')}"
        if trained != model_key:
            raise CellsegError(
                f"{where}: init.checkpoint {path} is a {trained} run and this run trains "
                f"{model_key}: name a {model_key} run's best.pt or set init: scratch"
            )
        return dict(content["model"]), {}
    state = content
    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if (
        not isinstance(state, Mapping)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise CellsegError(
            f"{where}: init.checkpoint {path} holds no state dict (name -> tensor); name a "
            "cellseg best.pt, a COSEM weights file or a saved state_dict, or set init: scratch"
        )
    renamed = cosem_names(state)
    skip = COSEM_HEAD if renamed is not None else {}
    state = renamed if renamed is not None else state
    if any(name.startswith("net.") for name in state):
        return dict(state), skip
    return {f"net.{name}": tensor for name, tensor in state.items()}, skip


def cosem_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """A COSEM checkpoint's names as ``cellmap_models``' network has them: its ``chain.*``
    entries duplicate the ``architecture.*`` and ``prediction_head.*`` ones and are dropped,
    ``architecture.`` is removed and ``unet.`` becomes ``backbone.`` (the renaming
    ``cellmap_models.pytorch.cosem.load_model`` applies). None: not a COSEM checkpoint."""
    if not any(name.startswith(("architecture.", "chain.")) for name in state):
        return None
    renamed = {}
    for name, tensor in state.items():
        if name.startswith("chain."):
            continue
        renamed[name.replace("architecture.", "").replace("unet.", "backbone.")] = tensor
    return renamed


def imagenet_state(
    network: SegmentationModel, where: str, pretrained: bool = True
) -> dict[str, torch.Tensor]:
    """timm's ImageNet weights of the network's encoder, in the network's naming.

    The encoder is built again as timm defines it (its default sizes, with the network's
    input channels, out_indices and, for fixed-size transformers, input size) with
    ``pretrained=True``; its tensors that match the configured encoder load. ``pretrained``
    False builds the same encoder without weights: the names and shapes, for
    :func:`imagenet_share` (nothing is downloaded).

    Raises:
        CellsegError: the model has no timm encoder, or the weights cannot be had (offline
            with an empty Hugging Face cache): one line.
    """
    entry = get_entry(network.name, network.dim)
    key = f"{network.name}_{network.dim}"
    if not entry.pretrained_capable:
        capable = [f"{n}_{d}" for n, d in list_models() if get_entry(n, d).pretrained_capable]
        raise CellsegError(
            f"{where}: init: imagenet needs a timm 2D encoder ({', '.join(capable)}) and "
            f"{key} has none; set init: scratch or {{checkpoint: PATH}}"
        )
    config = network.config
    first = next(m for m in network.net.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    in_channels = first.in_channels if isinstance(first, nn.Conv2d) else 1
    try:
        stock = create_timm_unet(
            f"{network.name} {network.dim}",
            in_channels,
            1,
            encoder=config["encoder"],
            encoder_kwargs={},
            out_indices=config["out_indices"],
            decoder_channels=None,
            decoder_dropout=0.0,
            pretrained=pretrained,
            img_size=config["input_shape"] if network.input_rule.fixed is not None else None,
        )
    except CellsegError as error:
        cause = error.__cause__ or error
        first_line = (str(cause).strip().splitlines() or [""])[0][:200]
        raise CellsegError(
            f"{where}: init: imagenet: timm's weights for {config['encoder']!r} could not be "
            f"had ({type(cause).__name__}: {first_line}); run once with network access to fill "
            "the Hugging Face cache, or set init: scratch"
        ) from None
    return {f"net.encoder.{name}": t for name, t in stock.encoder.state_dict().items()}


def imagenet_share(network: SegmentationModel) -> float:
    """The share of ``network``'s parameters (elements) that ``init: imagenet`` would load, from
    the names and shapes of timm's encoder alone (no weights are downloaded, ``network`` is not
    changed).

    Raises:
        CellsegError: the model has no timm encoder.
    """
    state = imagenet_state(network, f"{network.name}_{network.dim}", pretrained=False)
    parameters = dict(network.named_parameters())
    total = sum(p.numel() for p in parameters.values())
    loaded = sum(
        p.numel()
        for name, p in parameters.items()
        if name in state and tuple(state[name].shape) == tuple(p.shape)
    )
    return loaded / total if total else 0.0


def initialize_weights(
    network: SegmentationModel, init: str | Mapping[str, str], where: str
) -> InitReport | None:
    """Apply ``init`` to a freshly built network; None for ``scratch``.

    Raises:
        CellsegError: see :func:`source_state` and :func:`imagenet_state`; a checkpoint that
            fills less than :data:`MIN_LOADED_FRACTION` of the parameters (another
            architecture).
    """
    if init == "scratch":
        return None
    key = f"{network.name}_{network.dim}"
    if init == "imagenet":
        state = imagenet_state(network, where)
        report = load_matching(network, state, f"imagenet: timm {network.config['encoder']}")
        if not report.loaded:
            raise CellsegError(
                f"{where}: init: imagenet: no tensor of timm's {network.config['encoder']} "
                f"matches {key}'s {network.preset} preset; use the seed preset or set init: "
                "scratch"
            )
        return report
    path = init["checkpoint"]
    state, skip = source_state(path, key, where)
    report = load_matching(network, state, str(path), skip)
    if report.loaded_fraction < MIN_LOADED_FRACTION:
        raise CellsegError(
            f"{where}: init.checkpoint {path} fills {report.loaded_fraction:.0%} of {key}'s "
            f"parameters ({len(report.loaded)} of {len(network.state_dict())} tensors match by "
            f"name and shape): a checkpoint of another architecture or preset; name one of "
            f"{key} ({network.preset} preset) or set init: scratch"
        )
    return report
