"""A latent store's metadata as untrusted input: its schema, and the digest that seals it.

Two things live here, both pure functions of a store's bytes (no zarr, no numpy):

* :func:`validate_attrs` checks the root attribute ``era5latent`` against one typed schema
  (types, ranges, names that are safe as array names) before anything uses it; every violation
  is a one-line :class:`StoreError` naming the key.
* :func:`metadata_digests` / :func:`check_metadata` seal a finished store's metadata: the sha256
  of every node's ``zarr.json`` (arrays and subgroups, at any depth) and of the root document (its
  canonical JSON without the digest itself and without consolidated metadata, which is checked
  against the arrays' own documents instead), recorded in ``era5latent.metadata_sha256`` when the
  store is marked complete (format version 2, docs/format.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from typing import Any

from era5latent.errors import StoreError
from era5latent.fsutil import is_url, url_fs

#: the key of ``era5latent`` that holds the metadata digests (format version 2)
DIGEST_KEY = "metadata_sha256"
ROOT_DOC = "zarr.json"

#: upper bounds that keep a crafted store from asking for absurd sizes (far above any real one)
MAX_CODE_BITS = 1 << 16
MAX_TOKEN_SIDE = 1 << 14
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# -- raw documents ------------------------------------------------------------------------------

def read_doc(path: str, rel: str) -> bytes:
    """The bytes of ``rel`` (e.g. ``codes_z/zarr.json``) inside the store at ``path``."""
    if is_url(path):
        fs, p = url_fs(path)
        data: bytes = fs.cat_file(p.rstrip("/") + "/" + rel)
        return data
    with open(os.path.join(path, *rel.split("/")), "rb") as f:
        return f.read()


def child_docs(path: str) -> list[str]:
    """``NAME/zarr.json`` of every node below the store's root, subgroups' children included
    (``_era5latent/zarr.json``, ``_era5latent/build_done/zarr.json``), sorted.

    A node's children are the directories beside its ``zarr.json`` that hold one (an array's
    chunk directory ``c`` holds none, so chunks are never walked)."""
    out: list[str] = []
    if is_url(path):
        fs, p = url_fs(path)
        base = p.rstrip("/")
        level = "/*/zarr.json"
        while found := sorted(str(f)[len(base) + 1:] for f in fs.glob(base + level)):
            out += found
            level = "/*" + level
        return sorted(out)

    def walk(rel: str) -> None:
        here = os.path.join(path, *rel.split("/")) if rel else path
        try:
            names = os.listdir(here)
        except OSError:
            return
        for n in sorted(names):
            if os.path.isfile(os.path.join(here, n, "zarr.json")):
                child = f"{rel}/{n}" if rel else n
                out.append(f"{child}/zarr.json")
                walk(child)

    walk("")
    return sorted(out)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_root(doc: dict[str, Any]) -> bytes:
    """The root document as sealed: without consolidated metadata and without the digest."""
    d = {k: v for k, v in doc.items() if k != "consolidated_metadata"}
    attrs = dict(d.get("attributes") or {})
    meta = attrs.get("era5latent")
    if isinstance(meta, dict):
        attrs["era5latent"] = {k: v for k, v in meta.items() if k != DIGEST_KEY}
    d["attributes"] = attrs
    return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=True).encode()


def _load(data: bytes, rel: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as err:
        raise StoreError(f"{rel} is not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise StoreError(f"{rel} is not a JSON object")
    return doc


def metadata_digests(path: str) -> dict[str, str]:
    """The digests a finished store records: one per array document and one for the root."""
    return digests_of(_load(read_doc(path, ROOT_DOC), ROOT_DOC),
                      {rel: read_doc(path, rel) for rel in child_docs(path)})


def digests_of(root: dict[str, Any], children: dict[str, bytes]) -> dict[str, str]:
    """:func:`metadata_digests` of a store whose root document (parsed, as written or as it
    will be written) is ``root`` and whose other documents are ``children`` (their bytes by
    :func:`child_docs` path, in its order)."""
    out = {rel: _sha(data) for rel, data in children.items()}
    out[ROOT_DOC] = _sha(canonical_root(root))
    return out


def check_metadata(path: str, recorded: Any, ours: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Every way the store's metadata differs from the digests it recorded (empty: intact).

    Each entry names the document: ``codes_z/zarr.json (sha256 differs)``. ``ours`` names the
    arrays the store must have digests for (a digest removed is as bad as a document changed);
    other arrays (added by other tools) are not era5latent's to judge.
    """
    if not isinstance(recorded, dict) or not recorded:
        return [f"{DIGEST_KEY} is missing or not an object"]
    problems: list[str] = [f"{rel} has no digest recorded at finalize" for rel in
                           sorted({ROOT_DOC} | {f"{n}/zarr.json" for n in ours})
                           if rel not in recorded]
    docs: dict[str, dict[str, Any]] = {}
    for rel, want in sorted(recorded.items()):
        try:
            data = read_doc(path, rel)
        except (OSError, KeyError) as err:
            problems.append(f"{rel} unreadable ({type(err).__name__})")
            continue
        try:
            doc = _load(data, rel)
        except StoreError as err:
            problems.append(str(err))
            continue
        have = _sha(canonical_root(doc) if rel == ROOT_DOC else data)
        if have != want:
            problems.append(f"{rel} (sha256 differs from the one recorded at finalize)")
        else:
            docs[rel] = doc
    root = docs.get(ROOT_DOC)
    consolidated = (root or {}).get("consolidated_metadata")
    if isinstance(consolidated, dict):
        entries = consolidated.get("metadata")
        for rel in recorded:
            if rel == ROOT_DOC or rel not in docs:
                continue
            name = rel.rsplit("/", 1)[0]
            entry = entries.get(name) if isinstance(entries, dict) else None
            if isinstance(entry, dict) and entry.get("node_type") == "group":
                # zarr lists a subgroup's children flat, beside it, leaving it an empty index
                entry = {k: v for k, v in entry.items() if k != "consolidated_metadata"}
            if entry != docs[rel]:
                problems.append(f"zarr.json (consolidated metadata of {name} differs from "
                                f"{rel})")
    return problems


def is_consolidated(path: str) -> bool:
    try:
        doc = _load(read_doc(path, ROOT_DOC), ROOT_DOC)
    except (OSError, StoreError, KeyError):
        return False
    return isinstance(doc.get("consolidated_metadata"), dict)


# -- schema -------------------------------------------------------------------------------------

def _bad(path: str, key: str, expected: str, found: Any) -> StoreError:
    shown = json.dumps(found, default=str)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return StoreError(f"{path}: attribute era5latent.{key} is {shown}; expected {expected}; the "
                      "store is damaged or was not written by era5latent: re-encode it")


def _int(path: str, key: str, v: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise _bad(path, key, f"an integer {rng}", v)
    return v


def _num(path: str, key: str, v: Any, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (
            positive and v <= 0):
        raise _bad(path, key, "a finite positive number" if positive else "a finite number", v)
    return float(v)


def _str(path: str, key: str, v: Any) -> str:
    if not isinstance(v, str):
        raise _bad(path, key, "a string", v)
    return v


def _obj(path: str, key: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _bad(path, key, "a JSON object", v)
    return v


def _list(path: str, key: str, v: Any, n: int | None = None) -> list[Any]:
    if not isinstance(v, list) or (n is not None and len(v) != n):
        raise _bad(path, key, "a list" if n is None else f"a list of {n}", v)
    return v


def safe_name(path: str, key: str, v: Any) -> str:
    """A name that becomes part of an array name: no path separators, no ``..``."""
    if not isinstance(v, str) or not _NAME.match(v) or ".." in v:
        raise _bad(path, key, "a name of letters, digits, '_', '.' or '-' (no path separators "
                              "or '..')", v)
    return v


def validate_attrs(path: str, meta: dict[str, Any], max_version: int) -> None:
    """Refuse a latent store whose ``era5latent`` attribute breaks the schema (docs/format.md).

    Only what the attributes say on their own; :func:`era5latent.store.core.check_layout` then holds
    them against the arrays.
    """
    _int(path, "format_version", meta.get("format_version"), 1, max_version)
    if "package_version" in meta:
        _str(path, "package_version", meta["package_version"])
    model = _obj(path, "model", meta.get("model"))
    sha = model.get("sha256")
    if not isinstance(sha, str) or not _HEX64.match(sha):
        raise _bad(path, "model.sha256", "64 lowercase hex digits", sha)
    groups = _obj(path, "groups", meta.get("groups"))
    if not groups:
        raise _bad(path, "groups", "at least one group", groups)
    for name, g in groups.items():
        safe_name(path, "groups", name)
        k = f"groups.{name}"
        g = _obj(path, k, g)
        chans = _list(path, f"{k}.channels", g.get("channels"))
        if not chans:
            raise _bad(path, f"{k}.channels", "at least one channel", chans)
        for c in chans:
            safe_name(path, f"{k}.channels", c)
        for i, m in enumerate(_list(path, f"{k}.meta", g.get("meta"), len(chans))):
            _num(path, f"{k}.meta[{i}]", m)
        for u in _list(path, f"{k}.units", g.get("units"), len(chans)):
            _str(path, f"{k}.units", u)
        bits = _int(path, f"{k}.code_bits", g.get("code_bits"), 8, MAX_CODE_BITS)
        if bits % 8:
            raise _bad(path, f"{k}.code_bits", "a multiple of 8", bits)
        for i, side in enumerate(_list(path, f"{k}.token_grid", g.get("token_grid"), 2)):
            _int(path, f"{k}.token_grid[{i}]", side, 1, MAX_TOKEN_SIDE)
        if g.get("array", f"codes_{name}") != f"codes_{name}":
            raise _bad(path, f"{k}.array", f"'codes_{name}'", g.get("array"))
    norm = _obj(path, "normalisation", meta.get("normalisation"))
    for ch, st in norm.items():
        st = _obj(path, f"normalisation.{ch}", st)
        _num(path, f"normalisation.{ch}.mean", st.get("mean"))
        _num(path, f"normalisation.{ch}.std", st.get("std"), positive=True)
    source = _obj(path, "source", meta.get("source"))
    layout = _obj(path, "source.layout", source.get("layout"))
    _str(path, "source.layout.format", layout.get("format"))
    for key in ("names", "units"):
        for kk, vv in _obj(path, f"source.layout.{key}", layout.get(key)).items():
            _str(path, f"source.layout.{key}.{kk}", vv)
    if not isinstance(layout.get("lat_descending"), bool):
        raise _bad(path, "source.layout.lat_descending", "true or false",
                   layout.get("lat_descending"))
    _num(path, "source.layout.lon_min", layout.get("lon_min"))
    # the optional keys (decode writes its output from them: a wrong type would reach it)
    for kk, vv in _obj(path, "source.layout.dims", layout.get("dims", {})).items():
        _str(path, f"source.layout.dims.{kk}", vv)
    for key in ("attrs", "coord_attrs"):
        for kk, vv in _obj(path, f"source.layout.{key}", layout.get(key, {})).items():
            _obj(path, f"source.layout.{key}.{kk}", vv)
    _obj(path, "source.layout.global_attrs", layout.get("global_attrs", {}))
    if layout.get("time_axis", "valid") not in ("valid", "reference"):
        raise _bad(path, "source.layout.time_axis", "valid or reference", layout.get("time_axis"))
    if layout.get("step_hours") is not None:
        _num(path, "source.layout.step_hours", layout.get("step_hours"))
    if not isinstance(layout.get("level_pa", False), bool):
        raise _bad(path, "source.layout.level_pa", "true or false", layout.get("level_pa"))
    dims = _list(path, "sample_dims", meta.get("sample_dims", []))
    reserved = {"time", "latitude", "longitude", "level", "build_done", "token_lat",
                "token_lon", "_era5latent", "residual", "mask"}
    for d in dims:
        safe_name(path, "sample_dims", d)
        if d in reserved or d.startswith(("codes_", "sha256_", "residual_")) or \
                dims.count(d) > 1:
            raise _bad(path, "sample_dims", "distinct names other than the store's own arrays",
                       dims)
    tr = _list(path, "time_range", meta.get("time_range", []))
    if len(tr) not in (0, 2) or not all(isinstance(t, str) for t in tr):
        raise _bad(path, "time_range", "[first, last] as ISO strings", tr)
    _int(path, "time_chunk", meta.get("time_chunk"), 1)
    if not isinstance(meta.get("complete"), bool):
        raise _bad(path, "complete", "true or false", meta.get("complete"))
    if "parts" in meta:
        _int(path, "parts", meta["parts"], 1)
    if meta.get("residual"):
        _residual(path, meta, groups)
    if "mask" in meta:
        _mask(path, meta, groups)
    if DIGEST_KEY in meta:
        digests = _obj(path, DIGEST_KEY, meta[DIGEST_KEY])
        for rel, h in digests.items():
            if not isinstance(rel, str) or ".." in rel.split("/") or rel.startswith("/") or not (
                    rel == ROOT_DOC or re.fullmatch(r"([A-Za-z0-9_][A-Za-z0-9_.-]*/)+zarr\.json",
                                                    rel)):
                raise _bad(path, DIGEST_KEY, "keys NAME/zarr.json or GROUP/NAME/zarr.json", rel)
            if not isinstance(h, str) or not _HEX64.match(h):
                raise _bad(path, f"{DIGEST_KEY}.{rel}", "64 lowercase hex digits", h)


#: residual codecs a reader of this version can apply
RESIDUAL_CODECS = ("sz3", "zfp")


def _residual(path: str, meta: dict[str, Any], groups: dict[str, Any]) -> None:
    """The ``residual`` attribute (format version 3): codec and per-channel bounds."""
    if meta["format_version"] < 3:
        raise _bad(path, "residual", "no residual layer in a format version "
                   f"{meta['format_version']} store (residuals came with version 3)", "...")
    r = _obj(path, "residual", meta["residual"])
    if r.get("codec") not in RESIDUAL_CODECS:
        raise _bad(path, "residual.codec", f"one of {', '.join(RESIDUAL_CODECS)} (a newer "
                   "era5latent may know more: upgrade it)", r.get("codec"))
    _str(path, "residual.spec", r.get("spec"))
    known = {c for g in groups.values() for c in g["channels"]}
    chans = _obj(path, "residual.channels", r.get("channels"))
    if not chans:
        raise _bad(path, "residual.channels", "at least one bounded channel", chans)
    for ch, b in chans.items():
        if ch not in known:
            raise _bad(path, "residual.channels", "channels of the store's groups", ch)
        b = _obj(path, f"residual.channels.{ch}", b)
        e = _num(path, f"residual.channels.{ch}.max_error", b.get("max_error"), positive=True)
        m = _num(path, f"residual.channels.{ch}.margin", b.get("margin"))
        if not 0 <= m < e:
            raise _bad(path, f"residual.channels.{ch}.margin", "0 <= margin < max_error", m)


def _mask(path: str, meta: dict[str, Any], groups: dict[str, Any]) -> None:
    """The ``mask`` attribute (format version 4): masked channels, fill, static masks' sha256."""
    if meta["format_version"] < 4:
        raise _bad(path, "mask", "no mask layer in a format version "
                   f"{meta['format_version']} store (masks came with version 4)", "...")
    m = _obj(path, "mask", meta["mask"])
    known = {c for g in groups.values() for c in g["channels"]}
    chans = _list(path, "mask.channels", m.get("channels"))
    if not chans or len(set(chans)) != len(chans) or \
            not all(isinstance(c, str) and c in known for c in chans):
        raise _bad(path, "mask.channels", "distinct channels of the store's groups", chans)
    if m.get("fill") != "mean":
        raise _bad(path, "mask.fill", "'mean' (a newer era5latent may know more: upgrade it)",
                   m.get("fill"))
    sums = _obj(path, "mask.static_sha256", m.get("static_sha256"))
    if set(sums) != set(chans):
        raise _bad(path, "mask.static_sha256", "one digest per masked channel", sorted(sums))
    for ch, h in sums.items():
        if not isinstance(h, str) or not _HEX64.match(h):
            raise _bad(path, f"mask.static_sha256.{ch}", "64 lowercase hex digits", h)
