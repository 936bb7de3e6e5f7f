"""WLA checkpoints: one safetensors file, weights plus JSON metadata (docs/format.md).

safetensors holds only tensors and a string-to-string header, so nothing in a checkpoint can run
code when loaded (no pickle anywhere). The header key ``era5latent`` holds JSON with the format
version, the model config, the groups and their channels, normalisation statistics, the grid and
the training provenance. Loading is strict: missing or unexpected weight names are an error that
names them. Files are written to a temporary name beside the target and renamed into place.

Training state for ``--resume`` lives in a sidecar written by ``era5latent.training.state``; a
checkpoint is complete without it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from era5latent.version import __version__
from era5latent.errors import CheckpointError, Era5LatentError, ModelMismatchError, StoreError
from era5latent.fsutil import atomic_file
from era5latent.model.wla import WLA, WLAConfig
from era5latent.io.variables import Channel, parse_channel

FORMAT = "era5latent.wla"
FORMAT_VERSION = 2  # 2: per-pixel mean fields (written only by checkpoints that have them)
#: tensor-name prefix of a channel's mean field (field normalisation), beside the weights
MEAN_FIELD = "normalisation.mean_field."
HEADER_KEY = "era5latent"
#: a group name: no path separators, no ".." (names reach store paths)
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass
class CheckpointMeta:
    """Everything a checkpoint says besides its weights."""

    config: WLAConfig
    groups: dict[str, tuple[Channel, ...]]  # trained channels per group
    # channel code -> {"mean", "std"} and, for a channel normalised by its mean field,
    # "anomaly_std" (the anomalies' std, its scale in the model's units)
    normalisation: dict[str, dict[str, float]]
    grid: dict[str, Any]  # shape, latitude/longitude first/last
    training: dict[str, Any] = field(default_factory=dict)
    # channel code -> time-mean field (H, W) float32, for the channels with "anomaly_std";
    # stored as tensors MEAN_FIELD + code (read by load_checkpoint, not by read_meta)
    mean_fields: dict[str, np.ndarray] = field(default_factory=dict)
    _stats_cache: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, repr=False, compare=False)

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT,
            "format_version": FORMAT_VERSION if self.mean_fields else 1,
            "package_version": __version__,
            "config": self.config.to_dict(),
            "groups": {g: [c.code for c in chs] for g, chs in self.groups.items()},
            "normalisation": self.normalisation,
            "grid": self.grid,
            "training": self.training,
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, path: str) -> CheckpointMeta:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}: metadata is not valid JSON ({err.msg})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise CheckpointError(f"{path} is a safetensors file but not an era5latent checkpoint "
                                  f"(format {d.get('format') if isinstance(d, dict) else None!r}, "
                                  f"expected {FORMAT!r})")
        if not isinstance(d.get("format_version"), int) or d["format_version"] > FORMAT_VERSION:
            raise CheckpointError(f"{path} has checkpoint format version {d.get('format_version')}; "
                                  f"this era5latent reads up to {FORMAT_VERSION}: upgrade era5latent")
        missing = [k for k in ("config", "groups", "normalisation", "grid") if k not in d]
        if missing:
            raise CheckpointError(f"{path}: metadata lacks {missing[0]!r}; the file is damaged or "
                                  "was not written by era5latent")
        groups = _groups(d["groups"], path)
        codes = [c.code for chs in groups.values() for c in chs]
        training = d.get("training", {})
        if not isinstance(training, dict):
            raise CheckpointError(f"{path}: metadata 'training' is {type(training).__name__}; "
                                  "expected an object: the file is damaged")
        return cls(config=WLAConfig.from_dict(d["config"]), groups=groups,
                   normalisation=_normalisation(d["normalisation"], codes, path),
                   grid=_grid(d["grid"], path), training=training)

    def channel_stats(self, channels: tuple[Channel, ...]) -> tuple[np.ndarray, np.ndarray]:
        """What the model's inputs are normalised by: ``(x - mean) / scale`` with ``mean``
        ``(C, 1, 1)``, or ``(C, H, W)`` where a channel has a mean field, and ``scale``
        ``(C, 1, 1)`` float64. Kept per channel tuple: the pipeline asks once per time chunk,
        and a (C, H, W) field at 721 x 1440 is 8 MB per channel."""
        key = tuple(c.code for c in channels)
        if key not in self._stats_cache:
            self._stats_cache[key] = self._channel_stats(channels)
        return self._stats_cache[key]

    def _channel_stats(self, channels: tuple[Channel, ...]) -> tuple[np.ndarray, np.ndarray]:
        scale = np.array([norm_scale(self.normalisation[c.code]) for c in channels])
        if not any(c.code in self.mean_fields for c in channels):
            mean = np.array([self.normalisation[c.code]["mean"] for c in channels])
            return mean.reshape(-1, 1, 1), scale.reshape(-1, 1, 1)
        h, w = (int(n) for n in self.grid["shape"])
        mean = np.empty((len(channels), h, w))
        for k, c in enumerate(channels):
            mf = self.mean_fields.get(c.code)
            mean[k] = self.normalisation[c.code]["mean"] if mf is None else mf
        return mean, scale.reshape(-1, 1, 1)


def norm_scale(stats: dict[str, float]) -> float:
    """A channel's scale in the model's units: its anomalies' std where it is normalised by its
    mean field, else its std."""
    return float(stats.get("anomaly_std", stats["std"]))


def split_mean_fields(tensors: dict[str, torch.Tensor]
                      ) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """A checkpoint file's tensors -> (weights, mean fields by channel code)."""
    weights = {k: v for k, v in tensors.items() if not k.startswith(MEAN_FIELD)}
    fields = {k[len(MEAN_FIELD):]: v.float().numpy() for k, v in tensors.items()
              if k.startswith(MEAN_FIELD)}
    return weights, fields


def _bad(path: str, key: str, found: Any, want: str) -> CheckpointError:
    shown = repr(found) if len(repr(found)) < 60 else type(found).__name__
    return CheckpointError(f"{path}: metadata {key} is {shown}; expected {want}: the file is "
                           "damaged or was not written by era5latent")


def _groups(value: Any, path: str) -> dict[str, tuple[Channel, ...]]:
    if not isinstance(value, dict) or not value:
        raise _bad(path, "'groups'", value, "an object of group names to channel lists")
    out = {}
    for g, chs in value.items():
        if not NAME.fullmatch(g) or ".." in g:
            raise _bad(path, "group name", g, "letters, digits, '_', '.' or '-'")
        if not isinstance(chs, list) or not chs or not all(isinstance(c, str) for c in chs):
            raise _bad(path, f"groups[{g!r}]", chs, "a non-empty list of channel codes")
        try:
            out[g] = tuple(parse_channel(c) for c in chs)
        except Era5LatentError as err:
            raise _bad(path, f"groups[{g!r}]", chs, f"known channels ({err})") from None
    return out


def _normalisation(value: Any, codes: list[str], path: str) -> dict[str, dict[str, float]]:
    if not isinstance(value, dict):
        raise _bad(path, "'normalisation'", value, "an object of channel codes to {mean, std}")
    for code in codes:
        stats = value.get(code)
        if not isinstance(stats, dict):
            raise _bad(path, f"normalisation[{code!r}]", stats, "an object {mean, std}")
        for k in ("mean", "std", *(("anomaly_std",) if "anomaly_std" in stats else ())):
            v = stats.get(k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or (k == "std" and v <= 0):
                raise _bad(path, f"normalisation[{code!r}][{k!r}]", v,
                           "a finite number" + (" > 0" if k != "mean" else ""))
    return value


def _grid(value: Any, path: str) -> dict[str, Any]:
    def pair(key: str, kind: Any, lo: float, hi: float) -> bool:
        v = value.get(key)
        return isinstance(v, list) and len(v) == 2 and all(
            isinstance(x, kind) and not isinstance(x, bool) and lo <= x <= hi for x in v)

    # latitude/longitude (first, last) are checked against a source where present
    if not isinstance(value, dict) or not pair("shape", int, 1, 1 << 20) or not (
            ("latitude" not in value or pair("latitude", (int, float), -90, 90)) and
            ("longitude" not in value or pair("longitude", (int, float), -360, 360))):
        raise _bad(path, "'grid'", value, "{shape: [nlat, nlon], latitude: [first, last], "
                   "longitude: [first, last]}")
    return value


@dataclass
class LoadedModel:
    """A model ready to use, with its metadata and the sha256 of the file it came from."""

    model: WLA
    meta: CheckpointMeta
    sha256: str
    path: str

    def provenance(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "preset": self.meta.config.preset,
                "config": self.meta.config.to_dict(), "file": os.path.basename(self.path)}


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str) -> None:
    """Write a safetensors file atomically (a temporary name beside ``path``, then a rename)."""
    try:
        with atomic_file(path) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp,
                      metadata=metadata)
    except StoreError as err:
        raise CheckpointError(str(err)) from None


def save_checkpoint(model: WLA, meta: CheckpointMeta, path: str) -> str:
    """Write ``model`` and ``meta`` to ``path``; returns the file's sha256."""
    tensors = dict(model.state_dict())
    tensors.update({MEAN_FIELD + code: torch.from_numpy(np.ascontiguousarray(mf, np.float32))
                    for code, mf in meta.mean_fields.items()})
    save_tensors(tensors, {HEADER_KEY: meta.to_json()}, path)
    return file_sha256(path)


def read_meta(path: str) -> CheckpointMeta:
    """Only the metadata of a checkpoint (no weights loaded)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no such checkpoint: {path}; train one with 'era5latent train'")
    try:
        with safe_open(path, framework="pt") as f:
            header = (f.metadata() or {}).get(HEADER_KEY)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({err}); expected a "
                              "file written by 'era5latent train'") from None
    if header is None:
        raise CheckpointError(f"{path} is a safetensors file without era5latent metadata; expected "
                              "a checkpoint written by 'era5latent train'")
    return CheckpointMeta.from_json(header, path)


def _file_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the safetensors header alone (nothing is read or allocated)."""
    try:
        with safe_open(path, framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read the weight index ({err}); the file is "
                              "truncated or damaged") from None


def _names(keys: list[str]) -> str:
    return f"{keys[:5]}{'...' if len(keys) > 5 else ''}"


def load_checkpoint(path: str, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint strictly: every weight present, nothing unexpected, shapes equal.

    The model is built on the meta device without its random initialisers, its parameter shapes
    are checked against the safetensors header before any weight is read (so a config that
    claims huge sizes fails at once, without allocating them), and the parameters then *are* the
    tensors read from the file (``load_state_dict(assign=True)``): one copy of the weights, no
    initialisation cost.
    """
    meta = read_meta(path)
    try:
        with torch.device("meta"):  # no memory: but a size past int64 still fails in torch
            model = WLA(meta.config, init_weights=False)
    except (RuntimeError, OverflowError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: its config describes a model that cannot be built "
                              f"({str(err).splitlines()[0][:120]}); the file is damaged or was "
                              "not written by era5latent") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    grid = tuple(int(n) for n in meta.grid["shape"])
    expected.update({MEAN_FIELD + code: grid for code, st in meta.normalisation.items()
                     if "anomaly_std" in st})
    shapes = _file_shapes(path)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match its config: missing {_names(missing)}, "
            f"unexpected {_names(unexpected)}; the file is damaged or was not written by "
            f"era5latent")
    bad = [f"{k} {shapes[k]} (config: {expected[k]})" for k in expected
           if shapes[k] != expected[k]]
    if bad:
        raise CheckpointError(f"{path}: weight shapes differ from its config for "
                              f"{'; '.join(bad[:3])}{'...' if len(bad) > 3 else ''}; the file "
                              f"is damaged or was not written by era5latent")
    try:
        tensors = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read weights ({err}); the file is truncated or "
                              "damaged") from None
    tensors, meta.mean_fields = split_mean_fields(tensors)
    params = dict(model.state_dict())
    for k, t in tensors.items():
        want = params[k].dtype
        if t.dtype != want:
            if not t.dtype.is_floating_point:
                raise CheckpointError(f"{path}: weight {k} has dtype {t.dtype}, expected "
                                      f"{want}; the file is damaged or was not written by "
                                      f"era5latent")
            tensors[k] = t.to(want)
    model.load_state_dict(tensors, strict=True, assign=True)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:  # a non-persistent buffer would need recomputing here; the WLA has none
        raise CheckpointError(f"{path}: model tensors {_names(left)} are not in the file and "
                              "cannot be rebuilt; this era5latent cannot load it")
    model.eval().to(device)
    return LoadedModel(model, meta, file_sha256(path), path)


def check_same_model(loaded: LoadedModel, expected_sha256: str, store_path: str) -> None:
    if loaded.sha256 != expected_sha256:
        raise ModelMismatchError(
            f"{loaded.path} (sha256 {loaded.sha256[:12]}) is not the model {store_path} was made "
            f"with (sha256 {expected_sha256[:12]}); pass that model with --model")
