"""The weights format: safetensors plus a JSON model card, checked on every load.

A model is two files side by side::

    dpa_densebiasnet.safetensors   the tensors (no pickle, cannot run code)
    dpa_densebiasnet.json          the model card: which network and its constructor
                                   arguments, classes, voxel spacing, window, intensity
                                   normalisation, training data, metrics, sha256

Loading rebuilds the network from the card through the registry
(:data:`renalseg.nets.NETWORKS`), verifies the file's sha256 against the card, and
loads the tensors with strict name and shape checks. Anything that does not match
is a :class:`~renalseg.errors.ModelError` that names the file and says what to do.
Like nnU-Net's plans, the card travels with the weights, so inference reads the
spacing, window and normalisation from the model rather than from defaults.

This module imports torch only inside the functions that need it, so reading a
card (``renalseg weights info``) stays fast.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from renalseg import __version__
from renalseg.errors import ModelError, suggest
from renalseg.io.output import atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "ModelCard",
    "FORMAT_VERSION",
    "DEFAULT_WEIGHTS_PATH",
    "AUTHORS_NORMALIZATION",
    "model_paths",
    "resolve_weights",
    "NETWORK_NAMES",
    "shipped_model",
    "read_card",
    "sha256_file",
    "save_model",
    "load_model_files",
    "normalize_hu",
]

log = logging.getLogger(__name__)

#: version of this file format; a card with a newer one is refused
FORMAT_VERSION: int = 1


def _shipped_weights_dir() -> Path:
    """The folder of the shipped weights: ``weights/`` at the top of the repository.

    An installed wheel holds that folder's models in ``renalseg/shipped_weights/``
    (pyproject.toml maps the folder onto that package); a source checkout and an
    editable install (``pip install -e .``) read ``weights/`` itself, beside the
    package. Plain paths from this file, so no symlink (Windows checkouts do not make
    them) and the checkout's own weights, never those of another installed copy.
    """
    package = Path(__file__).parent
    installed = package / "shipped_weights"
    return installed if installed.is_dir() else package.parent / "weights"


#: the shipped model (``weights/dpa_densebiasnet.safetensors``; see :func:`_shipped_weights_dir`)
DEFAULT_WEIGHTS_PATH: Path = _shipped_weights_dir() / "dpa_densebiasnet.safetensors"
#: the authors' intensity normalisation: clip HU to [-1024, 1024], scale to [0, 1]
AUTHORS_NORMALIZATION: dict[str, list[float]] = {"clip_hu": [-1024.0, 1024.0], "scale": [0.0, 1.0]}


def _json_clean(value: Any) -> Any:
    """Tuples to lists (and back through JSON), so cards compare equal after a round trip."""
    return json.loads(json.dumps(value))


@dataclass(frozen=True)
class ModelCard:
    """What a weights file is: the JSON that travels beside the ``.safetensors``.

    Attributes:
        name: the network's registry key (``"dpa_densebiasnet"``, ``"dae"``, ...).
        hyperparameters: the network's constructor arguments.
        classes: label value (as a string) → class name, e.g.
            ``{"0": "background", "1": "renal_artery"}``.
        spacing_xyz_mm: the voxel spacing the model was trained at, (x, y, z) mm.
        window_zyx: the sliding-window size in voxels, (z, y, x).
        normalization: ``{"clip_hu": [lo, hi], "scale": [a, b]}``: HU clipped to
            [lo, hi], then mapped linearly onto [a, b].
        parameter_count: number of parameters (filled in by :func:`save_model`).
        training: free description of the training data and settings.
        metrics: validation metrics, e.g. ``{"dice": 0.83}``.
        synthetic_training_only: True when no real patient data was used.
        limits: what the weights were validated on and the quality verdict's
            thresholds (``{"validated_on": {...}, "thresholds": {...}}``, see
            :func:`renalseg.quality.limits_from_card`); empty: the documented defaults
            (:data:`renalseg.quality.DEFAULT_LIMITS`).
        sha256: hex digest of the ``.safetensors`` file (filled in by :func:`save_model`).
        format_version: :data:`FORMAT_VERSION` when written.
        renalseg_version: the version that wrote the files.

    Example:
        >>> card = ModelCard(name="dae", hyperparameters={"widths": [8, 8, 16, 24]})
        >>> ModelCard.from_dict(json.loads(card.to_json())) == card
        True
        >>> card.classes
        {'0': 'background', '1': 'renal_artery'}
    """

    name: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=lambda: {"0": "background", "1": "renal_artery"})
    spacing_xyz_mm: tuple[float, float, float] = (0.7, 0.7, 1.0)
    window_zyx: tuple[int, int, int] = (64, 152, 152)
    normalization: dict[str, list[float]] = field(default_factory=lambda: dict(AUTHORS_NORMALIZATION))
    parameter_count: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    synthetic_training_only: bool = True
    limits: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    format_version: int = FORMAT_VERSION
    renalseg_version: str = __version__

    def __post_init__(self) -> None:
        # normalise containers so equality survives a JSON round trip
        object.__setattr__(self, "hyperparameters", _json_clean(dict(self.hyperparameters)))
        object.__setattr__(self, "classes", {str(k): str(v) for k, v in self.classes.items()})
        object.__setattr__(self, "spacing_xyz_mm", tuple(float(s) for s in self.spacing_xyz_mm))
        object.__setattr__(self, "window_zyx", tuple(int(s) for s in self.window_zyx))
        object.__setattr__(self, "normalization", {k: [float(x) for x in v] for k, v in self.normalization.items()})
        object.__setattr__(self, "training", _json_clean(dict(self.training)))
        object.__setattr__(self, "metrics", _json_clean(dict(self.metrics)))
        object.__setattr__(self, "limits", _json_clean(dict(self.limits)))
        self._validate()

    def _validate(self) -> None:
        problems = []
        if not self.name:
            problems.append("name is empty")
        if len(self.spacing_xyz_mm) != 3 or min(self.spacing_xyz_mm) <= 0:
            problems.append(f"spacing_xyz_mm {self.spacing_xyz_mm} is not 3 positive values")
        if len(self.window_zyx) != 3 or min(self.window_zyx) < 1:
            problems.append(f"window_zyx {self.window_zyx} is not 3 positive sizes")
        if "0" not in self.classes or not all(k.isdigit() for k in self.classes):
            problems.append(f"classes {self.classes} must map label values '0', '1', ... to names")
        clip, scale = self.normalization.get("clip_hu"), self.normalization.get("scale")
        if set(self.normalization) != {"clip_hu", "scale"} or len(clip or ()) != 2 or len(scale or ()) != 2 \
                or not clip[0] < clip[1] or not scale[0] < scale[1]:  # type: ignore[index]
            problems.append(f"normalization {self.normalization} is not "
                            "{'clip_hu': [lo, hi], 'scale': [a, b]} with lo < hi and a < b")
        if problems:
            raise ModelError("invalid model card: " + "; ".join(problems) + ".")
        if self.limits:
            from renalseg.quality import limits_from_card

            limits_from_card(self.limits)  # raises ModelError naming what is wrong

    @property
    def num_classes(self) -> int:
        """Number of output classes (background included)."""
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON-ready data (tuples become lists)."""
        return _json_clean(dataclasses.asdict(self))

    def to_json(self) -> str:
        """The card as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str | Path = "model card") -> ModelCard:
        """Build a card from parsed JSON, refusing unknown or missing fields.

        Raises:
            ModelError: missing/unknown fields, a newer format version, invalid values.
        """
        if not isinstance(data, dict):
            raise ModelError(f"{source}: a model card must be a JSON object, got {type(data).__name__}.")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ModelError(f"{source}: unknown model card field(s) {', '.join(unknown)}; valid fields: "
                             f"{', '.join(names)}." + suggest(unknown[0], names))
        missing = [n for n in ("name", "hyperparameters", "classes", "sha256", "format_version") if n not in data]
        if missing:
            raise ModelError(f"{source}: the model card lacks {', '.join(missing)}; re-export the model with "
                             "renalseg.weights.save_model.")
        if int(data["format_version"]) > FORMAT_VERSION:
            raise ModelError(f"{source}: model format version {data['format_version']} is newer than this "
                             f"renalseg supports ({FORMAT_VERSION}); upgrade renalseg.")
        try:
            return cls(**data)
        except (TypeError, ValueError, AttributeError) as err:
            raise ModelError(f"{source}: invalid model card ({err}).") from err


#: the registered network names (renalseg.nets.NETWORKS's keys, tested equal), known without importing torch
NETWORK_NAMES: tuple[str, ...] = ("dae", "densebiasnet", "dpa_densebiasnet", "unet3d")


def shipped_model(name: str) -> Path | None:
    """The shipped model called ``name`` (a stem like ``dpa_densebiasnet``), or ``None``.

    Example:
        >>> shipped_model("no_such_model") is None
        True
    """
    stem = Path(name).name.removesuffix(".safetensors").removesuffix(".json")
    if not stem or Path(name).name != str(name):
        return None
    folder = DEFAULT_WEIGHTS_PATH.parent
    for candidate in (folder / f"{stem}.safetensors", folder / f"{stem}.json"):
        if candidate.is_file():
            return candidate
    return None


def resolve_weights(path: Path | str, option: str = "--weights") -> Path:
    """A weights file given by path, or by a shipped model's name (``densebiasnet``).

    A path that exists is returned as it is; a bare name that is no file is looked up
    among the shipped models (which an installed wheel keeps inside the package).

    Raises:
        UsageError: neither an existing path nor a shipped model (the shipped ones listed).

    Example:
        >>> resolve_weights("dpa_densebiasnet").name
        'dpa_densebiasnet.safetensors'
    """
    from renalseg.errors import UsageError

    path = Path(path)
    if path.exists():
        return path
    if str(path) == path.name and not any(p.is_file() for p in model_paths(path)):  # a bare name
        shipped = shipped_model(str(path))
        if shipped is not None:
            return shipped
        names = sorted(p.stem for p in DEFAULT_WEIGHTS_PATH.parent.glob("*.safetensors"))
        raise UsageError(f"{option} {path}: neither a file nor a shipped model; shipped models: "
                         f"{', '.join(names) or 'none'}.{suggest(str(path), names)}")
    raise UsageError(f"{option} {path}: no such file. Give a .safetensors file, its .json model card "
                     "or a shipped model's name.")


def model_paths(path: Path | str) -> tuple[Path, Path]:
    """The ``(weights.safetensors, card.json)`` pair for either file of a model, or its stem.

    Example:
        >>> [p.name for p in model_paths("weights/dpa_densebiasnet.json")]
        ['dpa_densebiasnet.safetensors', 'dpa_densebiasnet.json']
    """
    path = Path(path)
    stem = path.name.removesuffix(".safetensors").removesuffix(".json")
    return path.with_name(stem + ".safetensors"), path.with_name(stem + ".json")


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _missing_weights_message(weights: Path) -> str:
    if weights == DEFAULT_WEIGHTS_PATH or weights.resolve() == DEFAULT_WEIGHTS_PATH.resolve():
        return (f"the shipped weights {weights} are not present in this installation (no trained model has "
                "been added to weights/ yet); train one with `renalseg train` and pass --weights PATH.")
    return (f"weights file {weights} not found; a model is a .safetensors file with its .json model card "
            "beside it. Check the path given to --weights.")


def read_card(path: Path | str) -> ModelCard:
    """Read the model card of a model (``path``: its .json, its .safetensors or its stem).

    Raises:
        ModelError: the card is missing, not JSON, or not a valid card.
    """
    weights, card_path = model_paths(path)
    if not card_path.is_file():
        if not weights.is_file():
            raise ModelError(_missing_weights_message(weights))
        raise ModelError(f"model card {card_path} not found beside {weights.name}; copy the .json that came "
                         "with the weights next to it.")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"model card {card_path} cannot be read as JSON ({err}); restore it from the "
                         "model's original files.") from err
    return ModelCard.from_dict(data, source=card_path)


def _expected_hyperparameters(network: nn.Module) -> dict[str, Any]:
    hyper = getattr(network, "hyperparameters", None)
    if not isinstance(hyper, dict):
        raise ModelError(f"{type(network).__name__} has no `hyperparameters` dict; only registered "
                         "renalseg networks can be saved.")
    return _json_clean(hyper)


def save_model(network: nn.Module, card: ModelCard, path: Path | str) -> Path:
    """Write ``network`` as ``<stem>.safetensors`` plus ``<stem>.json`` (each atomically).

    The card's ``name`` and ``hyperparameters`` must describe ``network`` (empty
    hyper-parameters are filled in from the network); ``sha256``,
    ``parameter_count`` and ``renalseg_version`` are filled in here.

    Args:
        network: a registered network (see :data:`renalseg.nets.NETWORKS`).
        card: its description.
        path: the .safetensors path, the .json path, or the stem.

    Returns:
        The path of the written .safetensors file.

    Raises:
        ModelError: the card does not describe the network.
    """
    from safetensors.torch import save as save_tensors

    from renalseg.nets import network_name

    name = network_name(network)
    if card.name != name:
        raise ModelError(f"the model card names network {card.name!r} but the network is {name!r}; "
                         f"set ModelCard(name={name!r}).")
    hyper = _expected_hyperparameters(network)
    if card.hyperparameters and card.hyperparameters != hyper:
        raise ModelError(f"the model card's hyperparameters {card.hyperparameters} differ from the network's "
                         f"{hyper}; pass hyperparameters=network.hyperparameters.")
    num_classes = hyper.get("num_classes")
    if num_classes is not None and num_classes != card.num_classes:
        raise ModelError(f"the model card lists {card.num_classes} classes {card.classes} but the network "
                         f"outputs {num_classes}; list one name per output class.")
    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in network.state_dict().items()}
    data = save_tensors(tensors, metadata={"renalseg_network": name, "format_version": str(FORMAT_VERSION)})
    card = dataclasses.replace(
        card, hyperparameters=hyper, sha256=hashlib.sha256(data).hexdigest(),
        parameter_count=sum(p.numel() for p in network.parameters()), renalseg_version=__version__,
        format_version=FORMAT_VERSION)
    weights, card_path = model_paths(path)
    atomic_write_bytes(weights, data)
    atomic_write_json(card_path, card.to_dict())
    log.info("saved %s (%d parameters) to %s", name, card.parameter_count, weights)
    return weights


def load_model_files(path: Path | str, *, device: Any = "cpu") -> tuple[nn.Module, ModelCard]:
    """Load a model saved by :func:`save_model`, checking everything; never unpickles.

    Args:
        path: the .safetensors, the .json, or their stem.
        device: where to put the network (a ``torch.device`` or its name).

    Returns:
        ``(network, card)``; the network is in eval mode.

    Raises:
        ModelError: a missing file, a checksum that differs from the card (a
            corrupted or altered file), a card that does not describe the tensors
            (names, shapes, dtypes, parameter count), or an unreadable file.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors

    from renalseg.nets import build_network

    weights, card_path = model_paths(path)
    if not weights.is_file():
        raise ModelError(_missing_weights_message(weights))
    card = read_card(weights)
    data = weights.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != card.sha256:
        raise ModelError(f"checksum mismatch: {weights} has sha256 {digest[:16]}…, but its card {card_path.name} "
                         f"says {card.sha256[:16] or '(none)'}…; the file is corrupted or was changed after "
                         "export. Copy both files again from the original, or re-export with save_model.")
    try:
        tensors = load_tensors(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise ModelError(f"{weights} is not a readable safetensors file ({err}); copy it again.") from err
    network = build_network(card.name, **card.hyperparameters)
    expected = network.state_dict()
    problems = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"missing tensors {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors {', '.join(unexpected[:5])}{' …' if len(unexpected) > 5 else ''}")
    for key in sorted(set(expected) & set(tensors)):
        want, got = expected[key], tensors[key]
        if tuple(want.shape) != tuple(got.shape) or want.dtype != got.dtype:
            problems.append(f"{key} is {got.dtype} {tuple(got.shape)}, the network needs "
                            f"{want.dtype} {tuple(want.shape)}")
    count = sum(p.numel() for p in network.parameters())
    if card.parameter_count and card.parameter_count != count:
        problems.append(f"the card says {card.parameter_count} parameters, {card.name} with these "
                        f"hyperparameters has {count}")
    if problems:
        raise ModelError(f"{weights} does not match its card {card_path.name} (network {card.name!r}, "
                         f"hyperparameters {card.hyperparameters}): " + "; ".join(problems[:6])
                         + (f" (and {len(problems) - 6} more)" if len(problems) > 6 else "")
                         + ". Use the card that was exported with these weights.")
    with torch.no_grad():
        network.load_state_dict(tensors, strict=True)
    network.to(device)
    network.eval()
    return network, card


def normalize_hu(array_hu: Any, card: ModelCard | dict[str, list[float]]) -> np.ndarray:
    """Map Hounsfield units to the network's input range, as the model card says.

    Args:
        array_hu: any array of HU values (e.g. a (Z, Y, X) ROI).
        card: the model card, or its ``normalization`` dict.

    Returns:
        float32 array of the same shape: HU clipped to ``clip_hu`` then mapped
        linearly onto ``scale`` (the authors: [-1024, 1024] → [0, 1]).

    Example:
        >>> normalize_hu(np.array([-2000, -1024, 0, 1024, 3000]), ModelCard(name="dpa_densebiasnet"))
        array([0. , 0. , 0.5, 1. , 1. ], dtype=float32)
    """
    norm = card.normalization if isinstance(card, ModelCard) else card
    try:
        (lo, hi), (a, b) = norm["clip_hu"], norm["scale"]
    except (KeyError, TypeError, ValueError) as err:
        raise ModelError(f"normalization {norm!r} is not {{'clip_hu': [lo, hi], 'scale': [a, b]}}.") from err
    clipped = np.clip(np.asarray(array_hu, dtype=np.float32), lo, hi)
    return ((clipped - np.float32(lo)) * np.float32((b - a) / (hi - lo)) + np.float32(a)).astype(np.float32,
                                                                                                 copy=False)
