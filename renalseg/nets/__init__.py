"""The networks, looked up by name in one registry.

Example:
    >>> sorted(NETWORKS)
    ['dae', 'densebiasnet', 'dpa_densebiasnet', 'unet3d']
    >>> build_network("densebiasnet", bias_quantity=2).bias_channels[:3]
    (2, 2, 2)
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from renalseg.errors import ModelError, suggest
from renalseg.nets.dae import DenoisingAutoencoder
from renalseg.nets.densebiasnet import DenseBiasNet, DPADenseBiasNet
from renalseg.nets.unet import UNet3D

__all__ = ["NETWORKS", "build_network", "network_name"]

#: registry key → network class; the key is what a model card's ``name`` holds
NETWORKS: dict[str, type[nn.Module]] = {
    "densebiasnet": DenseBiasNet,
    "dpa_densebiasnet": DPADenseBiasNet,
    "dae": DenoisingAutoencoder,
    "unet3d": UNet3D,
}


def build_network(name: str, **hyperparameters: Any) -> nn.Module:
    """Build a registered network from its name and constructor arguments.

    Raises:
        ModelError: unknown name (the message lists the valid ones), or arguments
            the network does not take.
    """
    if name not in NETWORKS:
        raise ModelError(f"unknown network {name!r}; valid names: {', '.join(sorted(NETWORKS))}."
                         + suggest(name, NETWORKS))
    cls = NETWORKS[name]
    accepted = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown:
        raise ModelError(f"network {name!r} does not take {', '.join(unknown)}; it takes "
                         f"{', '.join(accepted)}." + suggest(unknown[0], accepted))
    return cls(**hyperparameters)


def network_name(network: nn.Module) -> str:
    """The registry key of ``network``'s class.

    Raises:
        ModelError: the class is not registered.
    """
    for name, cls in NETWORKS.items():
        if type(network) is cls:
            return name
    raise ModelError(f"{type(network).__name__} is not a registered network; "
                     f"registered: {', '.join(sorted(NETWORKS))}.")
