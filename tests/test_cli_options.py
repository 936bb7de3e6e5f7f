"""No option is accepted and then ignored: every option of every command is either listed here as
standing alone, or as needing another, and each of those is refused (exit 2, one line naming
it) when what it needs is missing, before anything is read or written.

A new option fails ``test_every_option_of_every_command_is_classified`` until it is listed in
one of the two tables: in ``STANDALONE`` when it takes effect on its own, in ``DEPENDENT`` (and
``era5latent/cli/rules.py``) when it takes effect only together with another.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import assert_clean_error, run_cli

#: command -> options (Python names) that take effect on their own
STANDALONE: dict[str, set[str]] = {
    "(global)": {"version", "quiet"},
    "sample": {"out", "grid", "times", "start", "freq", "variables", "seed", "overwrite"},
    "train": {"data", "subset", "out", "preset", "steps", "batch_size", "lr", "device", "time",
              "time_axis", "step", "val_fraction", "checkpoint_every", "seed",
              "resume", "group", "workers", "nproc", "level_weights", "adversarial_weight", "ema",
              "quantizer", "precision", "checkpoint_activations", "grad_accum", "log_dir",
              "dry_run", "max_time", "target_bpv", "target_ratio", "normalise",
              "codebook_entropy"},
    "combine": {"models", "out"},
    "encode": {"data", "model", "subset", "out", "time", "time_axis", "step", "batch_size",
               "time_chunk", "device", "precision", "overwrite", "break_lock", "parts",
               "max_error", "scheduler", "workers", "allow_unseen_levels", "json_out"},
    "decode": {"latent", "model", "out", "subset", "time", "batch_size", "device", "precision",
               "overwrite", "allow_corrupt", "no_residual", "scheduler", "workers"},
    "finalize": {"store", "parts", "break_lock"},
    "info": {"store", "json_out", "parts"},
    "build": {"recipe", "check"},  # --check also validates --part
    "cleanup": {"path", "dry_run", "min_age", "json_out"},
    "evaluate": {"truth", "recon", "latent", "subset", "time", "time_axis", "step",
                 "climatology", "region", "time_chunk", "plot", "json_path"},
    "verify": {"store", "model"},
    "build-embed-map": {"inputs", "out", "attach_to", "layout", "like", "dtype", "fill", "pca",
                        "npz", "aggregate", "duplicates", "trust", "on_bad_row", "grid_map",
                        "id_column", "embedding_column", "chunks", "prefix", "overwrite",
                        "batch_rows", "json_out"},
}

ENC = ["encode", "nowhere.zarr", "--model", "none.safetensors", "--subset", "z500", "--out",
       "o.zarr"]
DEC = ["decode", "nowhere.zarr", "--model", "none.safetensors"]
TRAIN = ["train", "nowhere.zarr", "--subset", "z500", "--out", "m.safetensors"]
EMBED = ["build-embed-map", "nowhere.parquet", "--out", "map.zarr"]
EVAL = ["evaluate", "truth.zarr"]

#: (command, option) -> (the option without what it needs, the same with it). Run in an empty
#: directory: the first must be refused naming the option; the second passes this check (and
#: then fails on the missing inputs, or on a grid of 0 points).
DEPENDENT: dict[tuple[str, str], tuple[list[str], list[str]]] = {
    ("sample", "levels"): (["sample", "s.zarr", "--variables", "t2m,msl", "--levels", "500"],
                           ["sample", "s.zarr", "--variables", "t2m,z", "--levels", "500",
                            "--grid", "0x8"]),
    ("train", "memory_budget"): ([*TRAIN, "--memory-budget", "40"],
                                 [*TRAIN, "--memory-budget", "40", "--dry-run"]),
    ("train", "disc_start"): ([*TRAIN, "--disc-start", "100"],
                              [*TRAIN, "--disc-start", "100", "--adversarial-weight", "0.1"]),
    ("train", "val_every"): ([*TRAIN, "--val-fraction", "0", "--val-every", "5"],
                             [*TRAIN, "--val-fraction", "0.2", "--val-every", "5"]),
    ("train", "patience"): ([*TRAIN, "--patience", "3", "--steps", "10"],
                            [*TRAIN, "--patience", "3"]),
    ("train", "patch_stride"): ([*TRAIN, "--patch-stride", "4", "--target-bpv", "0.1"],
                                [*TRAIN, "--patch-stride", "4"]),
    ("train", "log_every"): ([*TRAIN, "--log-every", "5"], [*TRAIN, "--log-every", "5",
                                                            "--log-dir", "logs"]),
    ("train", "anonymous"): ([*TRAIN, "--anonymous"],
                             ["train", "s3://no-such-bucket/x.zarr", "--subset", "z501x",
                              "--out", "m.safetensors", "--anonymous"]),  # no network: bad subset
    ("encode", "residual_codec"): ([*ENC, "--residual-codec", "zfp"],
                                   [*ENC, "--residual-codec", "zfp", "--max-error", "z500=5"]),
    ("encode", "chunks_per_task"): ([*ENC, "--chunks-per-task", "2"],
                                    [*ENC, "--chunks-per-task", "2", "--workers", "1"]),
    ("decode", "chunks_per_task"): ([*DEC, "--out", "r.zarr", "--chunks-per-task", "2"],
                                    [*DEC, "--out", "r.zarr", "--chunks-per-task", "2",
                                     "--workers", "1"]),
    ("decode", "zarr_format"): ([*DEC, "--out", "r.nc", "--zarr-format", "3"],
                                [*DEC, "--out", "r.zarr", "--zarr-format", "2"]),
    ("build", "part"): (["build", "r.yaml", "--part", "1", "--train-only"],
                        ["build", "r.yaml", "--part", "1"]),
    ("build", "train_only"): (["build", "r.yaml", "--train-only", "--check"],
                              ["build", "r.yaml", "--train-only"]),
    ("build", "overwrite"): (["build", "r.yaml", "--overwrite", "--train-only"],
                             ["build", "r.yaml", "--overwrite"]),
    ("evaluate", "baselines"): ([*EVAL, "rec.zarr", "--baselines", "bitround,zfp"],
                                [*EVAL, "rec.zarr", "--baselines", "bitround,zfp", "--latent",
                                 "l.zarr"]),
    ("evaluate", "sweep"): ([*EVAL, "rec.zarr", "--latent", "l.zarr", "--baselines", "none",
                             "--sweep", "0.1,0.2"],
                            [*EVAL, "rec.zarr", "--latent", "l.zarr", "--sweep", "0.1,0.2"]),
    ("evaluate", "model"): ([*EVAL, "rec.zarr", "--latent", "l.zarr", "--model", "m"],
                            [*EVAL, "--latent", "l.zarr", "--model", "m"]),
    ("evaluate", "device"): ([*EVAL, "rec.zarr", "--device", "cpu"],
                             [*EVAL, "--model", "m", "--device", "cpu"]),
    ("build-embed-map", "modality"): ([*EMBED, "--modality", "s2"],
                                      [*EMBED, "--modality", "s2", "--aggregate", "mean"]),
    **{("build-embed-map", f"grid_map_{c}_column"): (
        [*EMBED, f"--grid-map-{c}-column", "x"],
        [*EMBED, f"--grid-map-{c}-column", "x", "--grid-map", "gm.parquet"])
       for c in ("id", "row", "col")},
}

#: a word the refusal says beside the option, per option whose rule lives outside cli/rules.py
NEEDLE = {("build-embed-map", "modality"): "--aggregate mean"}


def _commands() -> dict[str, list[str]]:
    import typer.main

    from era5latent.cli import app

    group = typer.main.get_command(app)
    out = {"(global)": [str(p.name) for p in group.params]}
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        out[name] = [str(p.name) for p in cmd.params]
    return out


def test_every_option_of_every_command_is_classified() -> None:
    unlisted, both = [], []
    for cmd, params in _commands().items():
        for p in params:
            listed = (p in STANDALONE.get(cmd, set())) + ((cmd, p) in DEPENDENT)
            if listed == 0:
                unlisted.append(f"{cmd} {p}")
            elif listed == 2:
                both.append(f"{cmd} {p}")
    assert not unlisted, ("options in neither table (does each take effect on its own? if not, "
                          f"add a rule to era5latent/cli/rules.py and DEPENDENT): {unlisted}")
    assert not both, f"listed as standalone and as dependent: {both}"
    known = {(c, p) for c, ps in _commands().items() for p in ps}
    stale = sorted(f"{c} {p}" for c, ps in STANDALONE.items() for p in ps if (c, p) not in known)
    assert not stale and set(DEPENDENT) <= known, (stale, set(DEPENDENT) - known)


def test_the_rules_of_the_cli_are_the_dependent_options_here() -> None:
    from era5latent.cli.rules import RULES

    enforced = {(c, n.option) for c, rules in RULES.items() for n in rules}
    assert enforced == set(DEPENDENT) - set(NEEDLE)


@pytest.mark.parametrize("key", sorted(DEPENDENT), ids=lambda k: f"{k[0]}-{k[1]}")
def test_an_option_without_what_it_needs_is_refused(key: tuple[str, str], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import typer.main

    from era5latent.cli import app

    monkeypatch.chdir(tmp_path)
    without, with_ = DEPENDENT[key]
    cmd = typer.main.get_command(app).commands[key[0]]  # type: ignore[attr-defined]
    spelled = max(next(p for p in cmd.params if p.name == key[1]).opts, key=len)
    assert spelled in without and spelled in with_
    res = run_cli(*without)
    assert_clean_error(res, spelled, NEEDLE.get(key, "but"))
    assert list(tmp_path.iterdir()) == []  # refused before anything was written
    ok = run_cli(*with_)  # passes this check, then fails on the inputs that are not there
    assert ok.exit_code == 2 and ok.stderr.strip() != res.stderr.strip(), ok.stderr
    assert "takes effect only" not in ok.stderr and not ok.stderr.startswith(f"error: {spelled}")


def test_the_issue_s_evaluate_line_is_refused_with_the_fix(tmp_path: Path) -> None:
    """`evaluate TRUTH REC --baselines bitround,zfp` without --latent had printed the WLA row
    alone, exit 0; now it says how to get the baselines."""
    res = run_cli("evaluate", tmp_path / "t.zarr", tmp_path / "r.zarr", "--baselines",
                  "bitround,zfp", "--json", tmp_path / "ev.json")
    assert_clean_error(res, "--baselines bitround,zfp", "--latent", "--baselines none")
    assert not (tmp_path / "ev.json").exists()
    # left at its default, --baselines asks for nothing: no refusal (the inputs are missing)
    res = run_cli("evaluate", tmp_path / "t.zarr", tmp_path / "r.zarr")
    assert res.exit_code == 2 and "--baselines" not in res.stderr
