"""``era5latent build RECIPE.yaml``: one YAML file runs a whole build, checked up front, recorded
in the output, and equal to the command line it stands for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import assert_clean_error, run_cli


def _files(store: Path, names: list[str]) -> dict[str, bytes]:
    """Every chunk and array document of the named arrays, by relative path."""
    out: dict[str, bytes] = {}
    for n in names:
        for f in sorted((store / n).rglob("*")):
            if f.is_file():
                out[str(f.relative_to(store))] = f.read_bytes()
    return out


def test_recipe_builds_the_store_the_command_line_builds(tmp_path: Path, sample_zarr: Path,
                                                         tiny_model: Path) -> None:
    cli_out, recipe_out = tmp_path / "cli.zarr", tmp_path / "recipe.zarr"
    res = run_cli("encode", sample_zarr, "--model", tiny_model, "--subset", "z500,t850,t2m",
                  "--out", cli_out, "--time", "2020-01-01T06/2020-01-04T00", "--time-chunk", "4",
                  "--batch-size", "3", "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    recipe = tmp_path / "build.yaml"
    # paths relative to the recipe's directory; names in other tools' spellings
    (tmp_path / "m.safetensors").symlink_to(tiny_model)
    recipe.write_text(f"""# a build recipe
source: {sample_zarr}
subset: [z_500, temperature_850, 2t]
model: m.safetensors
time: 2020-01-01T06/2020-01-04T00
time_chunk: 4
batch_size: 3
device: cpu
out: recipe.zarr
""")
    res = run_cli("build", recipe)
    assert res.exit_code == 0, res.stderr
    arrays = ["codes_z", "codes_t", "codes_surface", "time", "latitude", "longitude"]
    a, b = _files(cli_out, arrays), _files(recipe_out, arrays)
    assert a.keys() == b.keys() and len(a) > 6
    assert a == b  # codes and coordinates byte for byte

    # the recipe is in the store, sealed by its metadata digest, shown by info
    assert all(ln.startswith("PASS") for ln in run_cli("verify", recipe_out).stdout.splitlines())
    info = json.loads(run_cli("info", recipe_out, "--json").stdout)
    assert info["recipe"]["subset"] == ["z500", "t850", "t2m"]
    assert info["recipe"]["model"] == str(tmp_path / "m.safetensors")
    assert "recipe" not in json.loads(run_cli("info", cli_out, "--json").stdout)
    shown = run_cli("info", recipe_out).stdout
    assert "built from this recipe" in shown and "time_chunk: 4" in shown

    # the recipe info prints is itself a recipe, and builds the same store again
    from era5latent.recipe import RECIPE_ATTR, recipe_of, to_yaml

    again = tmp_path / "again.yaml"
    stored = recipe_of(str(recipe_out))
    assert stored is not None
    again.write_text(to_yaml(stored | {"out": str(tmp_path / "again.zarr")}))
    assert run_cli("build", again).exit_code == 0
    assert _files(tmp_path / "again.zarr", arrays) == b
    # an unknown root attribute is ignored by the store's readers (docs/format.md)
    import zarr

    assert RECIPE_ATTR in zarr.open_group(str(recipe_out), mode="r").attrs


def test_recipe_trains_then_encodes(tmp_path: Path, train_zarr: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""source: {train_zarr}
subset: z500,t2m
model: wla.safetensors
train:
  steps: 2
  batch_size: 2
  val_every: 1
out: latent.zarr
device: cpu
parts: 2
""")
    # a part before the model exists is refused: train first
    assert_clean_error(run_cli("build", recipe, "--part", "1"), "--train-only")
    assert run_cli("build", recipe, "--train-only").exit_code == 0
    assert (tmp_path / "wla.safetensors").is_file() and not (tmp_path / "latent.zarr").exists()
    for i in ("2", "1"):
        assert run_cli("build", recipe, "--part", i).exit_code == 0
    res = run_cli("build", recipe)  # finishes the store, writing the recipe
    assert res.exit_code == 0, res.stderr
    info = json.loads(run_cli("info", tmp_path / "latent.zarr", "--json").stdout)
    assert info["complete"] and info["recipe"]["train"]["steps"] == 2
    assert info["recipe"]["train"]["preset"] == "tiny"  # defaults filled in


BASE = "source: s.zarr\nsubset: z500\nmodel: m.safetensors\nout: o.zarr\n"


@pytest.mark.parametrize("text,needles", [
    (BASE + "subsett: t850\n", ["line 5", "subsett", "did you mean 'subset'"]),
    (BASE + "train:\n  step: 3\n", ["line 6", "train.step", "did you mean 'steps'"]),
    (BASE + "time_chunk: many\n", ["line 5", "time_chunk", "whole number"]),
    (BASE + "batch_size: 0\n", ["line 5", "batch_size", "positive"]),
    ("source: s.zarr\nsubset: z500\nmodel: m.safetensors\n", ["missing key 'out'"]),
    ("source: s.zarr\nsubset: zz500\nmodel: m\nout: o\n", ["line 2", "subset", "zz500"]),
    (BASE + "max_error: [1, 2]\n", ["line 5", "max_error", "expected bounds"]),
    (BASE + "residual_codec: lz4\n", ["line 5", "residual_codec", "sz3 or zfp"]),
    (BASE + "time_axis: forecast\n", ["line 5", "time_axis", "valid or reference"]),
    (BASE + "train:\n  ema: 2\n", ["line 5", "train", "--ema"]),
    (BASE + "out: again.zarr\n", ["line 5", "out", "twice"]),
    ("source: [unclosed\n", ["line 2", "not valid YAML"]),
    ("- a list\n", ["line 1", "mapping"]),
])
def test_malformed_recipe_is_one_line_naming_the_key(tmp_path: Path, text: str,
                                                     needles: list[str]) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    assert_clean_error(run_cli("build", recipe), "bad.yaml", *needles)
    assert not (tmp_path / "o.zarr").exists()


def test_a_recipe_with_bounds_builds_a_store_with_residuals(tmp_path: Path, sample_zarr: Path,
                                                           tiny_model: Path) -> None:
    (tmp_path / "m.safetensors").symlink_to(tiny_model)
    recipe = tmp_path / "bounded.yaml"
    recipe.write_text(f"""source: {sample_zarr}
subset: z500,t2m
model: m.safetensors
device: cpu
max_error: {{t2m: 0.5, "*": 1%}}
residual_codec: zfp
out: bounded.zarr
""")
    res = run_cli("build", recipe)
    assert res.exit_code == 0, res.stderr
    info = json.loads(run_cli("info", tmp_path / "bounded.zarr", "--json").stdout)
    assert info["residual"]["present"] and info["residual"]["codec"] == "zfp"
    assert info["residual"]["channels"]["t2m"]["max_error"] == 0.5
    assert info["recipe"]["max_error"] == "t2m=0.5,*=1%"


@pytest.mark.parametrize("data,needles", [
    # tags that would construct Python objects, or anything but plain data: refused by line
    (b'source: !!python/object/apply:os.system ["touch pwned"]\n',
     ["line 1", "'!!python/object/apply:os.system'", "not allowed"]),
    (BASE.encode() + b"train: !!python/object/new:dict [[[steps, 2]]]\n",
     ["line 5", "!!python/object/new:dict"]),
    (BASE.encode() + b"time: !!python/name:os.system\n", ["line 5", "!!python/name:os.system"]),
    (BASE.encode() + b"device: !custom cpu\n", ["line 5", "'!custom'"]),
    (BASE.encode() + b"x: !!binary aGk=\n", ["line 5", "!!binary"]),
    (BASE.encode() + b"train: !!set {steps}\n", ["line 5", "!!set"]),
    (BASE.encode() + b"batch_size: !!int many\n", ["line 5", "batch_size", "cannot read"]),
    # encodings: the byte offset (and its line)
    (b"\xff\xfe\x00bad", ["byte 0", "0xff", "UTF-16", "UTF-8"]),
    ("source: s.zarr\nsubset: z500\n".encode("utf-16"), ["byte 0", "UTF-16"]),
    (b"source: s.zarr\nsubset: z5\xe900\n", ["line 2", "byte 25", "0xe9", "UTF-8"]),
    (b"\xef\xbb\xbfsource: \xc3\n", ["line 1", "byte 11", "0xc3"]),
    (BASE.encode() + b"time: \x00\n", ["line 5", "not valid YAML"]),
    # empty, nested past reason, several documents
    (b"", ["empty recipe"]),
    (b"# only a comment\n\n", ["empty recipe"]),
    (b"[" * 50_000 + b"]" * 50_000, ["nested too deeply"]),
    (BASE.encode() + b"---\nsource: t.zarr\n", ["line 5", "not valid YAML"]),
])
def test_recipe_bytes_that_are_no_plain_utf8_yaml_are_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes, needles: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "bad.yaml"
    recipe.write_bytes(data)
    assert_clean_error(run_cli("build", recipe), "bad.yaml", *needles)
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "o.zarr").exists()


def test_a_utf8_bom_is_simply_read(tmp_path: Path) -> None:
    recipe = tmp_path / "bom.yaml"
    recipe.write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    res = run_cli("build", recipe, "--check")
    assert res.exit_code == 0, res.stderr
    assert "source: " + str(tmp_path / "s.zarr") in res.stdout


def test_a_directory_or_a_huge_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    (tmp_path / "dir.yaml").mkdir()
    assert_clean_error(run_cli("build", tmp_path / "dir.yaml"), "dir.yaml is a directory")
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as f:  # sparse: 64 GiB claimed, nothing to read
        f.truncate(64 << 30)
    assert_clean_error(run_cli("build", huge), "huge.yaml", "larger than 1 MiB")
    assert_clean_error(run_cli("build", "/dev/zero"), "larger than 1 MiB")  # no size to stat
