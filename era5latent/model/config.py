"""The WLA's configuration: presets, patch geometry and attention windows (no torch modules).

:class:`WLAConfig` fixes the architecture and so the shape of a checkpoint; :func:`preset_config`
builds one for a preset on a data grid. The modules that a config builds are in ``wla.py``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any, cast

from era5latent.errors import CheckpointError, OptionError

__all__ = ["PRESETS", "PVUM_HEADS", "WINDOW_TOKENS", "WLAConfig", "patch_geometry",
           "preset_config"]

PVUM_HEADS = 4  # heads of the PVUM one-layer transformer over channel tokens


# ----------------------------------------------------------------------------------------------
# Config


def patch_geometry(grid: tuple[int, int], stride: int, padding: int
                   ) -> tuple[tuple[int, int], tuple[int, int]]:
    """Token grid and kernel such that conv and transposed conv map (H, W) <-> (h, w) exactly.

    Per axis: ``h = max(1, round_half_up(H / stride))`` and
    ``kernel = H + 2 * padding - (h - 1) * stride``; then
    ``(H + 2p - k) // s + 1 == h`` and ``(h - 1) * s - 2p + k == H``.
    Paper: (721, 1440), stride 10, padding 2 -> tokens (72, 144), kernel (15, 14).
    """
    if stride < 1 or padding < 0:
        raise OptionError(f"patch_stride must be >= 1 and patch_padding >= 0, "
                          f"got {stride} and {padding}")
    tokens, kernel = [], []
    for n in grid:
        t = max(1, math.floor(n / stride + 0.5))
        k = n + 2 * padding - (t - 1) * stride
        if k < 1 or k <= padding:
            raise OptionError(
                f"grid axis {n} with patch stride {stride} and padding {padding} gives kernel {k}, "
                f"which must be >= 1 and > padding; use a smaller padding or stride")
        tokens.append(t)
        kernel.append(k)
    return (tokens[0], tokens[1]), (kernel[0], kernel[1])


@dataclass(frozen=True)
class WLAConfig:
    """Everything that fixes the architecture (and so the shape of a checkpoint)."""

    preset: str  # "tiny" | "small" | "paper" | "custom"
    grid: tuple[int, int]  # (nlat, nlon) of the data, e.g. (721, 1440)
    groups: tuple[str, ...]  # one autoencoder per group, e.g. ("z", "t", "surface")
    patch_stride: int  # 10 for paper
    patch_padding: int  # 2 for paper
    width: int  # transformer width D; 1024 for paper
    enc_depth: int  # 8 for paper
    dec_depth: int  # 16 for paper
    heads: int  # 16 for paper
    mlp_ratio: float = 4.0
    code_bits: int = 128  # K, bits per token (multiple of 8)
    feat_dim: int = 128  # F, PVUM feature channels
    meta_dim: int = 128  # sin/cos metadata embedding dim (multiple of PVUM_HEADS)
    windows: tuple[tuple[int, int], ...] = ()  # window-attention cycle; () = global everywhere
    global_every: int = 4  # every Nth block is global when windows are used
    # BSQ entropy terms (see BinarySphericalQuantizer): loss "bsq" = ws * sample - wc * codebook
    entropy_sample_weight: float = 0.1
    entropy_codebook_weight: float = 0.1
    entropy_temperature: float = 1.0

    def __post_init__(self) -> None:
        # normalise sequences to tuples (JSON gives lists), then validate everything
        set_ = object.__setattr__
        set_(self, "grid", tuple(int(n) for n in self.grid))
        set_(self, "groups", tuple(self.groups))
        set_(self, "windows", tuple(tuple(int(n) for n in w) for w in self.windows))
        self._validate()

    def _validate(self) -> None:
        if self.preset not in (*PRESETS, "custom"):
            raise OptionError(f"unknown preset {self.preset!r}: expected one of "
                              f"{', '.join((*PRESETS, 'custom'))}")
        if len(self.grid) != 2 or min(self.grid) < 1 or max(self.grid) > MAX_SIZE:
            raise OptionError(f"grid must be two sizes (nlat, nlon) in 1..{MAX_SIZE}, got "
                              f"{self.grid}")
        if not self.groups or len(set(self.groups)) != len(self.groups):
            raise OptionError(f"groups must be non-empty and unique, got {self.groups}")
        for g in self.groups:
            if not isinstance(g, str) or not g or "." in g:
                raise OptionError(f"group names must be non-empty strings without '.', got {g!r}")
        positive = {"patch_stride": self.patch_stride, "width": self.width,
                    "enc_depth": self.enc_depth, "dec_depth": self.dec_depth,
                    "heads": self.heads, "code_bits": self.code_bits,
                    "feat_dim": self.feat_dim, "meta_dim": self.meta_dim,
                    "global_every": self.global_every}
        for name, v in positive.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise OptionError(f"{name} must be a positive integer, got {v!r}")
            if v > MAX_SIZE:  # a crafted config: no layer of any preset comes near
                raise OptionError(f"{name} must be at most {MAX_SIZE}, got {v!r}")
        if isinstance(self.patch_padding, bool) or not isinstance(self.patch_padding, int) \
                or not 0 <= self.patch_padding <= MAX_SIZE:
            raise OptionError(f"patch_padding must be an integer in 0..{MAX_SIZE}, got "
                              f"{self.patch_padding!r}")
        if self.width % self.heads:
            raise OptionError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.code_bits % 8:
            raise OptionError(f"code_bits must be a multiple of 8, got {self.code_bits}")
        if self.meta_dim % PVUM_HEADS:
            raise OptionError(f"meta_dim must be a multiple of {PVUM_HEADS}, got {self.meta_dim}")
        if not 0 < self.mlp_ratio <= MAX_MLP_RATIO or int(self.width * self.mlp_ratio) < 1:
            raise OptionError(f"mlp_ratio must be in (0, {MAX_MLP_RATIO}], got {self.mlp_ratio}")
        for name in ("entropy_sample_weight", "entropy_codebook_weight"):
            if not getattr(self, name) >= 0:
                raise OptionError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.entropy_temperature > 0:
            raise OptionError(f"entropy_temperature must be > 0, got {self.entropy_temperature}")
        h, w = self.token_grid  # validates the patch geometry
        for win in self.windows:
            if len(win) != 2 or min(win) < 1 or h % win[0] or w % win[1]:
                raise OptionError(
                    f"attention window {win} does not divide the token grid {(h, w)} "
                    f"(grid {self.grid}, patch stride {self.patch_stride}); pick windows whose "
                    f"sides divide {h} and {w}, or none (global attention)")

    @property
    def token_grid(self) -> tuple[int, int]:
        """(h, w) tokens per frame."""
        return patch_geometry(self.grid, self.patch_stride, self.patch_padding)[0]

    @property
    def kernel(self) -> tuple[int, int]:
        """Patch-embedding kernel (same for the transposed conv of the decoder)."""
        return patch_geometry(self.grid, self.patch_stride, self.patch_padding)[1]

    @property
    def tokens(self) -> int:
        h, w = self.token_grid
        return h * w

    @property
    def code_bytes(self) -> int:
        """Bytes per token once bits are packed."""
        return self.code_bits // 8

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists); :meth:`from_dict` inverts it."""
        d = dataclasses.asdict(self)
        d["grid"] = list(self.grid)
        d["groups"] = list(self.groups)
        d["windows"] = [list(w) for w in self.windows]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WLAConfig:
        """Rebuild from :meth:`to_dict` output; any problem is a :class:`CheckpointError`.

        Unknown keys and missing required keys are named; fields that have defaults may be absent.
        """
        if not isinstance(d, dict):
            raise CheckpointError(f"model config must be a JSON object, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        required = [n for n, f in fields.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in d]
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(f"unknown keys {unknown}")
            if missing:
                parts.append(f"missing keys {missing}")
            raise CheckpointError(f"model config has {' and '.join(parts)}; the checkpoint was "
                                  f"written by another version or is corrupt")
        kwargs: dict[str, Any] = {}
        try:
            for name, value in d.items():
                kwargs[name] = _coerce_field(name, value)
            return cls(**kwargs)
        except (OptionError, TypeError, ValueError) as e:
            raise CheckpointError(f"model config is invalid: {e}") from e


#: the MLP's hidden width over the model width (4 in every preset; bounded so a crafted config
#: cannot ask for a tensor no machine holds)
MAX_MLP_RATIO = 64.0
#: the largest width, depth, head count or code size a config may name
MAX_SIZE = 1 << 20

_INT_FIELDS = {"patch_stride", "patch_padding", "width", "enc_depth", "dec_depth", "heads",
               "code_bits", "feat_dim", "meta_dim", "global_every"}
_FLOAT_FIELDS = {"mlp_ratio", "entropy_sample_weight", "entropy_codebook_weight",
                 "entropy_temperature"}


def _coerce_field(name: str, value: Any) -> Any:
    """Check one JSON value's type strictly (no silent float->int) and convert lists to tuples."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if name in _INT_FIELDS:
        if not is_int(value):
            raise TypeError(f"{name} must be an integer, got {value!r}")
        return value
    if name in _FLOAT_FIELDS:
        if not (is_int(value) or isinstance(value, float)):
            raise TypeError(f"{name} must be a number, got {value!r}")
        return float(value)
    if name == "preset":
        if not isinstance(value, str):
            raise TypeError(f"preset must be a string, got {value!r}")
        return value
    if name == "grid":
        if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(map(is_int, value)):
            raise TypeError(f"grid must be two integers, got {value!r}")
        return tuple(value)
    if name == "groups":
        if not isinstance(value, (list, tuple)) or not all(isinstance(g, str) for g in value):
            raise TypeError(f"groups must be a list of strings, got {value!r}")
        return tuple(value)
    if name == "windows":
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(w, (list, tuple)) and len(w) == 2 and all(map(is_int, w)) for w in value)
        if not ok:
            raise TypeError(f"windows must be a list of [h, w] integer pairs, got {value!r}")
        return tuple(tuple(w) for w in value)
    raise TypeError(f"unknown field {name!r}")  # unreachable: keys were checked


#: Architecture presets; geometry (grid, groups) comes from the data. Token grids:
#: tiny/small on 73x144 -> 9x18, on 721x1440 -> 90x180; paper on 721x1440 -> 72x144 (kernel 15x14).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(patch_stride=8, patch_padding=2, width=64, enc_depth=2, dec_depth=2, heads=4,
                 feat_dim=32, meta_dim=32),
    "small": dict(patch_stride=8, patch_padding=2, width=256, enc_depth=4, dec_depth=6, heads=8,
                  feat_dim=64, meta_dim=64),
    "paper": dict(patch_stride=10, patch_padding=2, width=1024, enc_depth=8, dec_depth=16,
                  heads=16, feat_dim=128, meta_dim=128, global_every=4),
}


def _paper_windows(token_grid: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """The paper's window cycle as fractions of the token grid: on 72x144 tokens this is
    (36, 36), (18, 72), (72, 18). Where the fractions are not whole, () (global attention)."""
    h, w = token_grid
    if h % 4 or w % 8:
        return ()
    return ((h // 2, w // 4), (h // 4, w // 2), (h, w // 8))


#: tiny and small attend globally up to this many tokens per frame, and in windows of at most
#: this many tokens above it, so that encode cost grows linearly with the grid.
WINDOW_TOKENS = 2048


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _grid_windows(token_grid: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """Window cycle for tiny and small, derived from the token grid.

    ``()`` (global attention) up to :data:`WINDOW_TOKENS` tokens. Above, the paper's three window
    shapes -- square, 4x wider than tall, 4x taller than wide (token units) -- with sides
    dividing the grid and WINDOW_TOKENS / 16 to WINDOW_TOKENS tokens each: the cycle minimising
    the sum of ``|log2(area / WINDOW_TOKENS)| + |log2(aspect / target aspect)|`` over its three
    windows among each shape's 12 best (duplicates dropped).
    Since these presets have no global block, the cycle must let tokens reach the whole grid:
    the least common multiple of its window heights must be h and of its widths w (no border
    shared by every window). On 90x180 tokens (721x1440, stride 8): (45, 45), (18, 90), (90, 20).
    Sides without convenient divisors (e.g. primes: no such cycle) get axial row and column
    strips (1, w), (h, 1) instead; if a strip itself is longer than WINDOW_TOKENS, global
    attention.
    """
    h, w = token_grid
    if h * w <= WINDOW_TOKENS:
        return ()
    pairs = [(a, b) for a in _divisors(h) for b in _divisors(w)
             if WINDOW_TOKENS // 16 <= a * b <= WINDOW_TOKENS]

    def score(p: tuple[int, int], aspect: float) -> float:
        return abs(math.log2(p[0] * p[1] / WINDOW_TOKENS)) + abs(math.log2(p[1] / p[0] / aspect))

    # the 12 best windows per shape, then the best-scoring connected cycle among them
    ranked = [sorted(pairs, key=lambda p: (score(p, r), p))[:12] for r in (1.0, 4.0, 0.25)]
    best: tuple[float, tuple[tuple[int, int], ...]] | None = None
    for cycle in itertools.product(*ranked):
        # With no global block, tokens reach across the grid only if no window border is shared
        # by every window of the cycle: the sides' least common multiples are the grid's sides.
        if math.lcm(*(a for a, _ in cycle)) != h or math.lcm(*(b for _, b in cycle)) != w:
            continue
        total = sum(score(p, r) for p, r in zip(cycle, (1.0, 4.0, 0.25)))
        if best is None or total < best[0]:
            best = (total, cycle)
    if best is None:
        return ((1, w), (h, 1)) if max(h, w) <= WINDOW_TOKENS else ()
    return tuple(dict.fromkeys(best[1]))  # duplicates dropped, order kept


def preset_config(preset: str, grid: tuple[int, int], groups: tuple[str, ...],
                  **overrides: Any) -> WLAConfig:
    """A validated config for ``preset`` on ``grid``; ``overrides`` replace any preset field.

    ``custom`` starts from ``tiny`` and is meant to be given overrides.

    The ``paper`` preset takes the paper's window cycle, scaled to the token grid where it divides
    (on 721x1440 exactly the paper's), else global attention, with every 4th block global.
    ``tiny`` and ``small`` attend globally up to :data:`WINDOW_TOKENS` tokens per frame and in
    :func:`_grid_windows` above it, with no global block (``global_every`` past the depth), so
    their cost grows linearly with the grid. An explicit ``windows`` override is used as given
    and must divide the token grid. Raises :class:`OptionError`.
    """
    if preset not in PRESETS and preset != "custom":
        raise OptionError(f"unknown preset {preset!r}: expected one of "
                          f"{', '.join((*PRESETS, 'custom'))}")
    fields = {f.name for f in dataclasses.fields(WLAConfig)}
    bad = sorted(set(overrides) - fields) + sorted({"preset", "grid", "groups"} & set(overrides))
    if bad:
        raise OptionError(f"cannot override {bad}: overridable fields are "
                          f"{sorted(fields - {'preset', 'grid', 'groups'})}")
    base = dict(PRESETS["tiny" if preset == "custom" else preset])
    base.update(overrides)
    if preset != "custom" and "windows" not in overrides:
        stride, padding = base["patch_stride"], base["patch_padding"]
        token_grid = patch_geometry(tuple(grid), stride, padding)[0]  # type: ignore[arg-type]
        if preset == "paper":
            base["windows"] = _paper_windows(token_grid)
        else:  # tiny, small: windows only, no global block (cost linear in the grid)
            base["windows"] = _grid_windows(token_grid)
            if base["windows"] and "global_every" not in overrides:
                base["global_every"] = max(base["enc_depth"], base["dec_depth"]) + 1
    # callers may pass a list (e.g. read back from JSON); WLAConfig checks its length
    return WLAConfig(preset=preset, grid=cast("tuple[int, int]", tuple(grid)),
                     groups=tuple(groups), **base)
