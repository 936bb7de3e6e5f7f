"""Build recipes: one YAML file that describes a whole build, checked before anything runs.

A recipe names the source, the channels, the model (or the training settings that make it), the
time range, the chunking, the parts and the output (docs/recipes.md shows one). :func:`load_recipe`
reads it into a typed :class:`Recipe`; every problem is one :class:`RecipeError` line naming the
file, the YAML line and the key (``recipe.yaml line 4: subsett: not a recipe key; did you mean
'subset'?``). :func:`build` runs it: train when the model does not exist yet, then encode, and
the recipe's canonical form (:meth:`Recipe.canonical`) is written into the store's root
attributes under ``era5latent_recipe`` before the store is sealed, so the metadata digest covers
it and ``info`` shows how the store was made.

The schema is a dataclass, not pydantic: the errors must carry YAML line numbers, which come
from PyYAML's node tree (pydantic would add a dependency and still need that mapping), and
the training section reuses :class:`era5latent.training.TrainOptions` field by field.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from era5latent.errors import Era5LatentError

#: the root attribute of a latent store that holds the recipe it was built from (an extra key
#: the store's schema ignores: readers ignore unknown attributes, docs/format.md)
RECIPE_ATTR = "era5latent_recipe"
RECIPE_VERSION = 1


class RecipeError(Era5LatentError):
    """A build recipe is malformed: one line naming the file, the YAML line and the key."""


@dataclass
class Recipe:
    """A validated build recipe (paths absolute, the subset as channel codes)."""

    source: str
    subset: list[str]
    model: str
    out: str
    version: int = RECIPE_VERSION
    anonymous: bool = False
    time: str | None = None
    time_axis: str = "valid"
    step: str | None = None
    train: dict[str, Any] | None = None  # TrainOptions fields (``time`` for time_range)
    time_chunk: int | None = None
    batch_size: int = 8
    device: str = "auto"
    precision: str = "auto"
    parts: int | None = None
    max_error: str | None = None  # encode --max-error (docs/residuals.md), as one spec string
    residual_codec: str = "sz3"
    path: str = field(default="", compare=False)  # the recipe file (not part of the recipe)

    def canonical(self) -> dict[str, Any]:
        """The recipe as stored in the output: every key, defaults filled in, JSON-safe."""
        d = dataclasses.asdict(self)
        d.pop("path")
        if self.train is not None:
            opts = self.train_options()
            d["train"] = {k: (opts.time_range if k == "time" else
                              opts.overrides.get(k) if k == "patch_stride" else getattr(opts, k))
                          for k in train_keys()}
        return {"version": d.pop("version")} | d

    def train_options(self) -> Any:
        """The :class:`~era5latent.training.TrainOptions` of the ``train`` section."""
        from era5latent.training import TrainOptions

        t = dict(self.train or {})
        t["time_range"] = t.pop("time", None)
        stride = t.pop("patch_stride", None)
        return TrainOptions(**t, overrides={"patch_stride": stride} if stride else {},
                            device=self.device)


# -- the schema: key -> (expected type, in words) ---------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "int": (_is_int, "a whole number"),
    "float": (lambda v: _is_int(v) or isinstance(v, float), "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
}

#: top-level keys: (type, required)
TOP: dict[str, tuple[str, bool]] = {
    "version": ("int", False), "source": ("str", True), "anonymous": ("bool", False),
    "subset": ("subset", True), "time": ("str", False), "time_axis": ("str", False),
    "step": ("step", False), "model": ("str", True), "train": ("train", False),
    "out": ("str", True), "time_chunk": ("int", False), "batch_size": ("int", False),
    "device": ("str", False), "precision": ("str", False), "parts": ("int", False),
    "max_error": ("max_error", False), "residual_codec": ("str", False),
}
#: train-section keys the recipe does not take (the build sets them, or they are per-run)
_TRAIN_EXCLUDED = {"resume", "overrides", "time_range", "device", "group", "log_dir",
                   "target_flag"}


def train_keys() -> dict[str, str]:
    """The ``train`` section's keys and types: TrainOptions' fields, ``time`` and
    ``patch_stride``."""
    from era5latent.training import TrainOptions

    out: dict[str, str] = {}
    for f in dataclasses.fields(TrainOptions):
        if f.name in _TRAIN_EXCLUDED:
            continue
        kind = str(f.type).replace(" | None", "")
        out[f.name] = kind + ("?" if "None" in str(f.type) else "")
    return out | {"time": "str?", "patch_stride": "int?"}


def _nearest(key: str, known: list[str]) -> str:
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    return f"did you mean {near[0]!r}?" if near else f"known keys: {', '.join(known)}"


class _Doc:
    """A YAML mapping with the line of each key (PyYAML's node tree)."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, line: int, key: str, msg: str) -> RecipeError:
        return RecipeError(f"{self.where} line {line}: {key}: {msg}")

    def mapping(self, node: Any, what: str) -> list[tuple[str, int, Any]]:
        import yaml

        if not isinstance(node, yaml.MappingNode):
            line = node.start_mark.line + 1 if node is not None else 1
            raise self.fail(line, what, "expected a mapping of keys (key: value lines)")
        out: list[tuple[str, int, Any]] = []
        seen: set[str] = set()
        for k, v in node.value:
            line = k.start_mark.line + 1
            key = _value(k, self, "key")
            if not isinstance(key, str):
                raise self.fail(line, str(key), "keys must be names")
            if key in seen:
                raise self.fail(line, key, "given twice; keep one")
            seen.add(key)
            out.append((key, line, v))
        return out


def _plain_tags(doc: _Doc, root: Any) -> None:
    """Refuse any node whose tag is not plain data, naming its line (every node once: aliases
    share nodes, so a crafted document cannot make this walk explode)."""
    import yaml

    seen: set[int] = set()
    todo = [root]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.tag not in PLAIN_TAGS:
            raise RecipeError(f"{doc.where} line {node.start_mark.line + 1}: the YAML tag "
                              f"{_short_tag(node.tag)!r} is not allowed in a recipe; expected "
                              "plain values (strings, numbers, lists, mappings): remove the tag")
        if isinstance(node, yaml.SequenceNode):
            todo.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            todo.extend(x for kv in node.value for x in kv)


def _short_tag(tag: str) -> str:
    return "!!" + tag[len("tag:yaml.org,2002:"):] if tag.startswith("tag:yaml.org,2002:") else tag


def _value(node: Any, doc: _Doc | None = None, key: str = "") -> Any:
    import yaml

    try:
        return yaml.SafeLoader("").construct_object(node, deep=True)
    except Exception as err:  # noqa: BLE001 (only plain tags get here: _plain_tags)
        # a plain tag with a value it cannot hold (``!!int abc``; ``!!timestamp x`` fails
        # inside PyYAML with an AttributeError)
        where = doc.where if doc is not None else "recipe"
        why = getattr(err, "problem", None) or str(err).splitlines()[0] or type(err).__name__
        raise RecipeError(f"{where} line {node.start_mark.line + 1}: {key or 'value'}: cannot "
                          f"read this value ({why}); expected a plain value: fix or remove its "
                          "tag") from None


#: the largest recipe read (a recipe is a screenful of keys; this refuses /dev/zero and the like)
MAX_RECIPE_BYTES = 1 << 20

#: the YAML tags a recipe may hold (plain data); any other (``!!python/...``, ``!!binary``,
#: ``!!set``, ``!custom``) is refused with its line before anything is constructed
PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in
                       ("str", "int", "float", "bool", "null", "seq", "map", "timestamp"))


def load_recipe(path: str) -> Recipe:
    """Read and validate the recipe at ``path`` (one :class:`RecipeError` line on any problem)."""
    name = os.path.basename(path) or path
    if os.path.isdir(path):
        raise RecipeError(f"{path} is a directory; expected a recipe file (YAML, docs/recipes.md)"
                          ": pass the recipe's path")
    try:
        with open(path, "rb") as f:  # at most one byte past the limit, whatever it is
            data = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as err:
        raise RecipeError(f"cannot read recipe {path}: {err.strerror}; check the path") from None
    if len(data) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{name} is larger than {MAX_RECIPE_BYTES // 2**20} MiB; expected a "
                          "recipe (a few dozen lines of YAML): check that this is the recipe")
    return parse_recipe(decode_recipe(data, name), path)


def decode_recipe(data: bytes, name: str = "recipe.yaml") -> str:
    """The text of recipe bytes: UTF-8, a UTF-8 byte-order mark dropped; anything else is one
    :class:`RecipeError` naming the byte offset (and its line)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise RecipeError(f"{name}: starts with a UTF-16 byte-order mark (byte 0 is "
                          f"0x{data[0]:02x}); expected UTF-8 text: save the recipe as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
        at = err.start + bom
        line = data[:at].count(b"\n") + 1
        raise RecipeError(f"{name} line {line}: byte {at} (0x{data[at]:02x}) is not UTF-8 "
                          "text; expected a UTF-8 YAML recipe: save it as UTF-8") from None


def parse_recipe(text: str, path: str = "recipe.yaml") -> Recipe:
    """Validate recipe ``text``; relative paths are taken from the directory of ``path``."""
    import yaml

    doc = _Doc(os.path.basename(path))
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        if isinstance(err, yaml.reader.ReaderError):  # a control character: its line
            line = text[:err.position].count("\n") + 1
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"{doc.where} line {line}: not valid YAML ({problem})") from None
    except RecursionError:
        raise RecipeError(f"{doc.where}: nested too deeply to be a recipe; expected key: value "
                          "lines (docs/recipes.md)") from None
    if root is None:
        raise RecipeError(f"{doc.where}: empty recipe; expected at least source, subset, model "
                          "and out (docs/recipes.md)")
    _plain_tags(doc, root)
    base = os.path.dirname(os.path.abspath(path))
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    for key, line, node in doc.mapping(root, "recipe"):
        if key not in TOP:
            raise doc.fail(line, key, f"not a recipe key; {_nearest(key, list(TOP))}")
        kind, _ = TOP[key]
        lines[key] = line
        v = _value(node, doc, key) if kind != "train" or isinstance(node, yaml.ScalarNode) else {}
        if kind == "train" and v is not None:
            values[key] = _train_section(doc, node, line)
            continue
        if v is None:
            if TOP[key][1]:
                raise doc.fail(line, key, "needs a value")
            continue
        values[key] = _check(doc, key, line, kind, v)
    for key, (_, required) in TOP.items():
        if required and key not in values:
            raise RecipeError(f"{doc.where}: missing key {key!r} (a recipe needs source, subset, "
                              "model and out; docs/recipes.md)")
    r = Recipe(**values, path=os.path.abspath(path))
    if r.version != RECIPE_VERSION:
        raise doc.fail(lines["version"], "version", f"{r.version} is not a recipe version this "
                       f"era5latent reads; expected {RECIPE_VERSION}")
    if r.residual_codec not in ("sz3", "zfp"):
        raise doc.fail(lines["residual_codec"], "residual_codec",
                       f"{r.residual_codec!r}: expected sz3 or zfp")
    if r.time_axis not in ("valid", "reference"):
        raise doc.fail(lines["time_axis"], "time_axis",
                       f"{r.time_axis!r}: expected valid or reference")
    for key in ("time_chunk", "batch_size", "parts"):
        v = getattr(r, key)
        if v is not None and v < 1:
            raise doc.fail(lines[key], key, f"{v}: expected a positive whole number")
    if r.train is not None:
        try:
            r.train_options().validate()
        except Era5LatentError as err:
            raise doc.fail(lines["train"], "train", str(err)) from None
    # paths: relative to the recipe's directory, so a recipe means the same from anywhere
    for key in ("source", "model", "out"):
        v = getattr(r, key)
        if "://" not in v:
            setattr(r, key, os.path.normpath(os.path.join(base, os.path.expanduser(v))))
    return r


def _check(doc: _Doc, key: str, line: int, kind: str, v: Any) -> Any:
    if kind == "subset":
        from era5latent.io.variables import parse_subset

        if not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, (str, int))
                                                                    for x in v))):
            raise doc.fail(line, key, "expected channels as 'z500,t850' or a list of names")
        try:
            return [c.code for c in parse_subset(v if isinstance(v, str) else [str(x) for x in v])]
        except Era5LatentError as err:
            raise doc.fail(line, key, str(err)) from None
    if kind == "max_error":  # 'z500=5,t850=0.1' or a mapping {z500: 5, "*": 1%}
        if isinstance(v, dict) and v and all(isinstance(k, str) and isinstance(b, (int, float, str))
                                             and not isinstance(b, bool) for k, b in v.items()):
            return ",".join(f"{k}={b}" for k, b in v.items())
        if isinstance(v, str) and v.strip():
            return v
        raise doc.fail(line, key, f"{v!r}: expected bounds as 'z500=5,t850=0.1' or a mapping "
                       "of channel (or '*') to bound, e.g. {t2m: 0.5, '*': 1%}")
    if kind == "step":
        if not (isinstance(v, str) or _is_int(v)):
            raise doc.fail(line, key, f"{v!r}: expected a forecast step such as 6, 6h or PT6H")
        return str(v)
    import datetime as dt

    if kind == "str" and isinstance(v, (dt.date, dt.datetime)):  # YAML read `time: 2020-01-01`
        return v.isoformat()
    # a kind not listed here (a newer TrainOptions field): TrainOptions.validate checks it
    ok, words = _TYPES.get(kind, (lambda _: True, "a value"))
    if not ok(v):
        raise doc.fail(line, key, f"{v!r}: expected {words}")
    return v


def _train_section(doc: _Doc, node: Any, line: int) -> dict[str, Any]:
    keys = train_keys()
    out: dict[str, Any] = {}
    for key, kline, vnode in doc.mapping(node, "train"):
        if key not in keys:
            raise doc.fail(kline, f"train.{key}",
                           f"not a training setting; {_nearest(key, list(keys))}")
        kind = keys[key]
        v = _value(vnode, doc, f"train.{key}")
        if v is None:
            if not kind.endswith("?"):
                raise doc.fail(kline, f"train.{key}", "needs a value")
            continue
        out[key] = _check(doc, f"train.{key}", kline, kind.rstrip("?"), v)
        if kind.rstrip("?") == "float":
            out[key] = float(out[key])
    return out


# -- running one ------------------------------------------------------------------------------

@dataclass
class BuildResult:
    recipe: Recipe
    trained: bool
    encode: Any  # pipeline.EncodeResult


def check_part(recipe: Recipe, part: int | None) -> None:
    """``--part I``: refuse it unless the recipe has ``parts`` N >= I (also under ``--check``)."""
    if part is None:
        return
    if recipe.parts is None:
        raise RecipeError(f"--part {part}: {recipe.path} has no 'parts' key; add 'parts: N' "
                          "to the recipe, or build without --part")
    if not 1 <= part <= recipe.parts:
        raise RecipeError(f"--part {part}: expected 1..{recipe.parts} (the recipe's parts)")


def build(recipe: Recipe, *, part: int | None = None, overwrite: bool = False,
          train_only: bool = False, train_progress: Any = None,
          encode_progress: Any = None) -> BuildResult:
    """Run ``recipe``: train its model if it has a ``train`` section and the model does not exist
    yet, then encode (all of it, or only ``part`` I of the recipe's ``parts``)."""
    from era5latent.fsutil import anonymous_options, exists
    from era5latent.model.checkpoint import load_checkpoint
    from era5latent.pipeline import encode
    from era5latent.io.sources import open_source
    from era5latent.io.variables import parse_subset

    channels = parse_subset(recipe.subset)
    storage = anonymous_options(recipe.source) if recipe.anonymous else None
    check_part(recipe, part)
    trained = False
    if not exists(recipe.model):
        if recipe.train is None:
            raise RecipeError(f"{recipe.path}: model {recipe.model} does not exist and the recipe "
                              "has no 'train' section; point model at a checkpoint, or add one")
        if part is not None:
            raise RecipeError(f"{recipe.path}: model {recipe.model} is not trained yet; run "
                              f"'era5latent build {recipe.path} --train-only' once before the "
                              "parts")
        from era5latent.training import train

        train(open_source(recipe.source, storage, time_axis=recipe.time_axis, step=recipe.step),
              channels, recipe.model, recipe.train_options(),
              progress=train_progress, storage_options=storage)
        trained = True
    if train_only:
        return BuildResult(recipe, trained, None)
    source = open_source(recipe.source, storage, time_axis=recipe.time_axis, step=recipe.step)
    res = encode(source, load_checkpoint(recipe.model), channels, recipe.out,
                 time_range=recipe.time, batch_size=recipe.batch_size, device=recipe.device,
                 overwrite=overwrite, time_chunk=recipe.time_chunk, precision=recipe.precision,
                 progress=encode_progress,
                 part=(part, recipe.parts) if part is not None and recipe.parts else None,
                 max_error=recipe.max_error, residual_codec=recipe.residual_codec,
                 root_attrs={RECIPE_ATTR: recipe.canonical()})
    return BuildResult(recipe, trained, res)


def recipe_of(store_path: str) -> dict[str, Any] | None:
    """The recipe a latent store was built from (None: made by ``encode``)."""
    from era5latent.store.core import open_latent_store

    got = open_latent_store(store_path).root.attrs.get(RECIPE_ATTR)
    return got if isinstance(got, dict) else None


def to_yaml(recipe: dict[str, Any]) -> str:
    """A stored recipe as YAML (what ``info`` prints and ``build`` reads back)."""
    import yaml

    return str(yaml.safe_dump(recipe, sort_keys=False, default_flow_style=False))
