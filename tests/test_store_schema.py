"""A latent store's metadata is untrusted input: crafted attributes and arrays give one line.

Each crafted store is refused by ``info`` and ``decode`` (exit 2, one line, no output) and by
``verify`` (exit 3, one FAIL line naming the key); nothing reaches zarr's path handling or
allocates what the attributes claim.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import assert_clean_error, run_cli


@pytest.fixture(scope="module")
def good_store(tmp_path_factory: pytest.TempPathFactory, sample_zarr: Path,
               tiny_model: Path) -> Path:
    out = tmp_path_factory.mktemp("schema") / "latent.zarr"
    res = run_cli("encode", sample_zarr, "--model", tiny_model, "--subset", "z500,t2m", "--out",
                  out, "--time-chunk", "8", "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    return out


def _attrs(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(store: Path) -> None:
        doc = json.loads((store / "zarr.json").read_text())
        edit(doc["attributes"]["era5latent"])
        (store / "zarr.json").write_text(json.dumps(doc))
    return apply


def _set(key: str, value: Any) -> Callable[[Path], None]:
    def edit(meta: dict[str, Any]) -> None:
        *path, last = key.split(".")
        d = meta
        for k in path:
            d = d[k]
        if value is _DELETE:
            del d[last]
        else:
            d[last] = value
    return _attrs(edit)


_DELETE = object()


def _rename_group(new: str) -> Callable[[Path], None]:
    def edit(meta: dict[str, Any]) -> None:
        meta["groups"][new] = meta["groups"].pop("z")
    return _attrs(edit)


def _truncate(array: str, chunk: str) -> Callable[[Path], None]:
    def apply(store: Path) -> None:
        f = store / array / "c" / chunk
        f.write_bytes(f.read_bytes()[:2])
    return apply


#: (crafted change, what the one line must name)
CRAFTED: dict[str, tuple[Callable[[Path], None], str]] = {
    "time_chunk 0": (_set("time_chunk", 0), "time_chunk"),
    "time_chunk negative": (_set("time_chunk", -8), "time_chunk"),
    "time_chunk a string": (_set("time_chunk", "8"), "time_chunk"),
    "time_chunk inconsistent": (_set("time_chunk", 4), "build_done"),
    "format_version a bool": (_set("format_version", True), "format_version"),
    "format_version negative": (_set("format_version", -1), "format_version"),
    "huge token grid": (_set("groups.z.token_grid", [100000, 100000]), "token_grid"),
    "token grid unlike the arrays": (_set("groups.z.token_grid", [9, 16]), "codes_z"),
    "huge code bits": (_set("groups.z.code_bits", 1 << 40), "code_bits"),
    "groups entry not an object": (_set("groups.z", [1, 2]), "groups.z"),
    "groups not an object": (_set("groups", "z"), "groups"),
    "model missing": (_set("model", _DELETE), "model"),
    "model sha256 not hex": (_set("model.sha256", "../x"), "model.sha256"),
    "group ../victim": (_rename_group("../victim"), "groups"),
    "group a/b": (_rename_group("a/b"), "groups"),
    "sample dim ../victim": (_set("sample_dims", ["../victim"]), "sample_dims"),
    "sample dim a real array": (_set("sample_dims", ["codes_z"]), "sample_dims"),
    "sample dim token_lat": (_set("sample_dims", ["token_lat"]), "sample_dims"),
    "sample dim a subgroup": (_set("sample_dims", ["_era5latent"]), "sample_dims"),
    "digest key a/../x": (_set("metadata_sha256", {"a/../x/zarr.json": "0" * 64}),
                          "metadata_sha256"),
    "complete a string": (_set("complete", "yes"), "complete"),
    "std zero": (_set("normalisation.z500.std", 0), "normalisation.z500.std"),
    "layout missing": (_set("source.layout", _DELETE), "source.layout"),
    "digest key ../x": (_set("metadata_sha256", {"../x/zarr.json": "0" * 64}),
                        "metadata_sha256"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_attributes_give_one_line(case: str, good_store: Path, tiny_model: Path,
                                          tmp_path: Path) -> None:
    store = tmp_path / "crafted.zarr"
    shutil.copytree(good_store, store)
    craft, key = CRAFTED[case]
    craft(store)
    assert_clean_error(run_cli("info", store), key)
    out = tmp_path / "r.zarr"
    assert_clean_error(run_cli("decode", store, "--model", tiny_model, "--out", out,
                               "--device", "cpu", "--allow-corrupt"), key)
    assert not out.exists()
    res = run_cli("verify", store)
    assert res.exit_code == 3 and "Traceback" not in res.stdout + res.stderr
    fails = [ln for ln in res.stdout.splitlines() if ln.startswith("FAIL")]
    assert len(fails) == 1 and key in fails[0], res.stdout
    assert not (tmp_path / "victim").exists()


@pytest.mark.parametrize("array,chunk,group", [("_era5latent/sha256_z", "1/0", "z"),
                                               ("_era5latent/build_done", "1", "z")])
def test_truncated_checksum_or_done_flag_chunk(array: str, chunk: str, group: str,
                                               good_store: Path, tiny_model: Path,
                                               tmp_path: Path) -> None:
    store = tmp_path / "cut.zarr"
    shutil.copytree(good_store, store)
    _truncate(array, chunk)(store)
    res = run_cli("verify", store)
    assert res.exit_code == 3 and "Traceback" not in res.stdout + res.stderr
    assert any(ln.startswith("FAIL") and array in ln and "chunk 1" in ln
               for ln in res.stdout.splitlines()), res.stdout
    info = run_cli("info", store)
    if array.endswith("build_done"):  # info reads the flags: named, one line
        assert_clean_error(info, "chunk 1 of array _era5latent/build_done", "corrupt")
    else:
        assert info.exit_code == 0, info.stderr
    out = tmp_path / "r.zarr"
    assert_clean_error(run_cli("decode", store, "--model", tiny_model, "--out", out,
                               "--device", "cpu"), "time chunk 1", group)
    res = run_cli("decode", store, "--model", tiny_model, "--out", out, "--device", "cpu",
                  "--allow-corrupt")
    assert res.exit_code == 0, res.stderr
    assert "filled with NaN" in res.stderr and "2020-01-03T00:00:00" in res.stderr


def test_a_huge_parts_count_is_refused_at_once(good_store: Path) -> None:
    assert_clean_error(run_cli("info", good_store, "--parts", "99999999999999999999"),
                       "--parts", "expected a count")
    assert_clean_error(run_cli("finalize", good_store, "--parts", "99999999999999999999"),
                       "--parts")


@pytest.mark.parametrize("case", ["huge token grid", "huge code bits", "time_chunk negative"])
def test_crafted_sizes_are_refused_within_1_gb(case: str, good_store: Path, tiny_model: Path,
                                               tmp_path: Path) -> None:
    """Nothing the attributes claim is allocated: the whole process peaks under 1 GB."""
    import subprocess
    import sys

    store = tmp_path / "crafted.zarr"
    shutil.copytree(good_store, store)
    CRAFTED[case][0](store)
    for args in (["info", str(store)],
                 ["decode", str(store), "--model", str(tiny_model), "--out",
                  str(tmp_path / "r.zarr"), "--device", "cpu", "--allow-corrupt"]):
        probe = ("import resource, subprocess, sys; "
                 "r = subprocess.run([sys.executable, '-m', 'era5latent.cli', *sys.argv[1:]], "
                 "capture_output=True, text=True); "
                 "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
                 "sys.stderr.write(r.stderr)")
        out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True,
                             text=True, timeout=300)
        code, peak_kib = map(int, out.stdout.split())
        assert code == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert peak_kib < 1 << 20, f"{args[0]} peaked at {peak_kib / 1024:.0f} MiB"
