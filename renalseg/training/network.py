"""The network a run trains: built from its config, started from ``--init`` or a DAE encoder.

Stage ``dae`` trains the convolutional denoising autoencoder; stage ``seg`` trains
DenseBiasNet, with the frozen DAE encoder's features embedded (DPA) unless the plain
network is chosen. :func:`build_training_network` seeds the initialisation, loads the
starting weights and freezes the encoder; the other functions are its parts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renalseg.errors import ModelError, UsageError, suggest
from renalseg.training.config import TrainConfig
from renalseg.training.data import parse_label_map

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "build_training_network",
    "load_initial_weights",
    "plain_to_dpa_state",
    "load_encoder",
    "freeze_encoder",
    "train_mode",
    "logits_module",
]

logger = logging.getLogger(__name__)


def build_training_network(config: TrainConfig, *, load_weights: bool = True) -> torch.nn.Module:
    """The network of ``config`` (seeded), with the frozen DAE encoder loaded for DPA.

    ``load_weights=False`` (a resumed run: its checkpoint restores every parameter)
    reads neither ``encoder`` nor ``init_weights``, so a run folder resumes even where
    those files are gone (e.g. a run folder copied to another computer); the
    DAE encoder is still frozen, as the checkpoint's optimiser expects.

    Raises:
        UsageError: an unknown network, or DPA without ``--encoder``.
        ModelError: encoder weights that do not fit the network.
    """
    import torch

    from renalseg.nets import NETWORKS, build_network

    if config.network not in NETWORKS:
        raise UsageError(f"Unknown network {config.network!r}; choose one of {', '.join(NETWORKS)}."
                         + suggest(config.network, NETWORKS))
    if config.stage == "dae" and config.network != "dae":
        raise UsageError(f"--stage dae trains the 'dae' network, not {config.network!r}.")
    if config.stage == "seg" and config.network == "dae":
        raise UsageError("--stage seg trains 'dpa_densebiasnet' or 'densebiasnet', not 'dae'.")
    torch.manual_seed(config.seed)
    network = build_network(config.network, **config.network_options)
    if not load_weights:
        if config.stage == "seg" and hasattr(network, "encoder"):
            freeze_encoder(network)
        return network
    if config.stage == "seg" and config.init_weights:
        from_plain = load_initial_weights(network, config)
        if from_plain:  # the plain weights bring no encoder: --encoder does
            if not config.encoder:
                raise UsageError(f"--init {config.init_weights} holds plain DenseBiasNet weights; to start "
                                 "DPA-DenseBiasNet from them pass --encoder RUN_DAE/dae.safetensors "
                                 "(or --no-dpa to go on training the plain network).")
            load_encoder(network, Path(config.encoder))
    elif config.stage == "seg" and hasattr(network, "encoder"):
        if not config.encoder:
            raise UsageError(
                f"{config.network} embeds a trained DAE encoder: pass --encoder RUN_DAE/dae.safetensors "
                "(from `renalseg train --stage dae`), or --no-dpa for plain DenseBiasNet."
            )
        load_encoder(network, Path(config.encoder))
    return network


def load_initial_weights(network: torch.nn.Module, config: TrainConfig) -> bool:
    """Copy ``config.init_weights`` into ``network`` (all of it; a DAE encoder stays frozen).

    Plain DenseBiasNet weights also start a DPA-DenseBiasNet (:func:`plain_to_dpa_state`):
    every weight is copied into the segmenter and the DPA feature inputs start at zero
    weight, so the network starts out computing exactly what the plain one did and
    learns from there how much of the DAE's features to use. The encoder is then
    loaded from ``config.encoder`` by the caller.

    Returns:
        True when plain weights were expanded into a DPA network (its encoder still
        to load), False for weights of the network itself.

    Raises:
        UsageError: the file does not exist.
        ModelError: unreadable weights, another network, or other hyper-parameters.
    """
    from renalseg.weights import load_model_files

    path = Path(config.init_weights)  # type: ignore[arg-type]
    if not path.exists():
        raise UsageError(f"--init {path}: no such file; pass a .safetensors saved by renalseg "
                         "(the shipped weights or a run's best.safetensors).")
    source, card = load_model_files(path)
    from_plain = card.name == "densebiasnet" and config.network == "dpa_densebiasnet"
    if card.name != config.network and not from_plain:
        raise ModelError(f"--init {path}: holds {card.name!r} weights, but this run trains {config.network!r}"
                         + (" (drop --no-dpa)" if card.name == "dpa_densebiasnet" else "") + ".")
    # GroupNorm's parameters have the same shapes whatever the grouping: compare it by name
    theirs = card.hyperparameters.get("group_size", 4)
    ours = getattr(network, "hyperparameters", {}).get("group_size", 4)
    if theirs != ours:
        raise ModelError(f"--init {path}: its network normalises {theirs} channels per group, this run's "
                         f"{ours}; pass --network-options '{{\"group_size\": {theirs}}}'.")
    state = source.state_dict()
    if from_plain:
        try:
            state = plain_to_dpa_state(state, network.state_dict())
        except ModelError as err:
            raise ModelError(f"--init {path}: {err}") from err
    head = _head_rows_by_class(network, state, card, config)
    try:
        network.load_state_dict({**state, **head}, strict=not from_plain)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise ModelError(f"--init {path}: its network has other hyper-parameters than this run's "
                         f"({first}).") from err
    if hasattr(network, "encoder"):
        freeze_encoder(network)
    return from_plain


def plain_to_dpa_state(plain: Mapping[str, Any], dpa: Mapping[str, Any]) -> dict[str, Any]:
    """A plain DenseBiasNet's state dict laid out for a DPA-DenseBiasNet's segmenter.

    DPA's analysis layers (1, 3, 5, 7) take the DAE features as extra input channels
    after the plain layer's own (see ``DenseBiasNet.layer_in_channels``); their weights
    start at zero, so the DPA network's output equals the plain network's whatever the
    encoder computes. The encoder's entries are left out (the caller loads a DAE).

    Raises:
        ModelError: the two networks differ in anything but those extra channels.
    """
    from renalseg.nets.densebiasnet import PRIOR_LAYERS

    takes_priors = {f"layers.{layer}.conv.weight" for layer in PRIOR_LAYERS}
    out: dict[str, Any] = {}
    for key, value in plain.items():
        target = f"segmenter.{key}"
        if target not in dpa:
            raise ModelError(f"plain weight {key!r} has no place in DPA-DenseBiasNet; the networks differ.")
        want = dpa[target]
        if want.shape == value.shape:
            out[target] = value
        elif key in takes_priors and want.shape[0] == value.shape[0] and want.shape[2:] == value.shape[2:] \
                and want.shape[1] > value.shape[1]:
            grown = want.new_zeros(want.shape)
            grown[:, : value.shape[1]] = value
            out[target] = grown
        else:
            raise ModelError(f"plain weight {key!r} {tuple(value.shape)} does not fit DPA-DenseBiasNet's "
                             f"{tuple(want.shape)}; the networks differ in widths or bias maps.")
    missing = [k for k in dpa if k not in out and not k.startswith("encoder.")]
    if missing:
        raise ModelError(f"the plain weights lack {len(missing)} of DPA-DenseBiasNet's segmenter weights "
                         f"(first: {missing[0]}).")
    return out


def _head_rows_by_class(network: torch.nn.Module, state: Mapping[str, Any], card: Any,
                        config: TrainConfig) -> dict[str, Any]:
    """The output layer for ``--init`` weights with other classes than the ``--label-map``.

    Adding a class to trained weights (e.g. the kidney beside the artery) keeps what
    they learned: each class the two share by name (background included) takes its
    row of the 1 × 1 × 1 output convolution from the weights; a new class keeps this
    run's seeded initialisation. Nothing to do (``{}``) when the classes are the same
    or the network has no ``head``.
    """
    own = dict(network.state_dict())
    heads = [key[: -len("weight")] for key in own if key == "head.weight" or key.endswith(".head.weight")]
    if len(heads) != 1:
        return {}
    w_key, b_key = heads[0] + "weight", heads[0] + "bias"
    if w_key not in state or own[w_key].shape == state[w_key].shape or own[w_key].shape[1:] != state[w_key].shape[1:]:
        return {}  # the same classes, or another network (load_state_dict names the mismatch)
    names = parse_label_map(config.label_map).class_names
    source_names = [str(card.classes.get(str(i), "")) for i in range(state[w_key].shape[0])]
    weight, bias = own[w_key].clone(), own[b_key].clone()
    shared = [name for name in names if name in source_names]
    for name in shared:
        weight[names.index(name)] = state[w_key][source_names.index(name)]
        bias[names.index(name)] = state[b_key][source_names.index(name)]
    logger.info("--init: output classes %s taken from the weights; %s start from scratch", shared,
                [name for name in names if name not in shared])
    return {w_key: weight, b_key: bias}


def load_encoder(network: torch.nn.Module, path: Path) -> None:
    """Copy a trained DAE's encoder into ``network.encoder``, frozen.

    Raises:
        UsageError: the file does not exist.
        ModelError: not DAE weights, or its encoder does not fit ``network.encoder``.
    """
    from renalseg.weights import load_model_files

    if not Path(path).exists():
        raise UsageError(f"--encoder {path}: no such file; train one with `renalseg train --stage dae`.")
    dae, card = load_model_files(Path(path))
    if getattr(card, "name", None) != "dae":
        raise ModelError(f"--encoder {path}: expected DAE weights (card name 'dae'); "
                         f"got {getattr(card, 'name', '?')!r}. Pass the dae.safetensors of a --stage dae run.")
    try:
        network.load_encoder_from(dae)  # type: ignore[operator]
    except ModelError as err:
        raise ModelError(f"--encoder {path}: {err}") from err
    freeze_encoder(network)


def freeze_encoder(network: torch.nn.Module) -> None:
    """No gradient for ``network.encoder`` and its normalisation in eval mode."""
    network.encoder.requires_grad_(False)
    network.encoder.eval()


def train_mode(network: torch.nn.Module) -> None:
    """Training mode, but a frozen DAE encoder stays in eval mode (its normalisation too)."""
    network.train()
    if hasattr(network, "encoder") and not any(p.requires_grad for p in network.encoder.parameters()):
        network.encoder.eval()


def logits_module(network: torch.nn.Module) -> torch.nn.Module:
    """A module whose ``forward`` gives logits (what DDP must wrap: it hooks ``forward``)."""
    import torch

    class LogitsOf(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner.logits(x) if hasattr(self.inner, "logits") else self.inner(x)

    return LogitsOf(network)
