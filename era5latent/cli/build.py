"""The ``build`` and ``cleanup`` commands: a whole build from a recipe; tidying after kills."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from era5latent.cli.common import _Bar, _echo, _note_leftovers, command


@command("build")
def build_cmd(
    recipe: Annotated[Path, typer.Argument(help="Build recipe (YAML; docs/recipes.md).")],
    part: Annotated[Optional[int], typer.Option(
        "--part", min=1, metavar="I", show_default=False,
        help="Encode only part I of the recipe's 'parts' (separate processes or batch jobs); "
             "finish with the same command without --part.")] = None,
    train_only: Annotated[bool, typer.Option(
        "--train-only", help="Train the recipe's model (if it does not exist yet) and stop: run "
                             "it once before the --part runs.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing output instead of resuming it.")] = False,
    check: Annotated[bool, typer.Option(
        "--check", help="Validate the recipe (and --part), print its canonical form and stop.")
    ] = False,
) -> None:
    """Run a whole build (train if needed, then encode) from one YAML recipe; re-run to resume.

    The recipe's canonical form is stored in the output's attributes ('era5latent info' shows
    it), so the same command reproduces the store.
    """
    from era5latent.recipe import build, check_part, load_recipe, to_yaml

    r = load_recipe(str(recipe))
    if check:
        check_part(r, part)  # --check --part I: is there such a part
        print(to_yaml(r.canonical()), end="")
        return
    with _Bar("train", "steps") as tbar, _Bar("encode", "samples") as ebar:
        res = build(r, part=part, overwrite=overwrite, train_only=train_only,
                    train_progress=lambda s, n, loss: tbar.update(s, n, f"loss {loss:.4f}"),
                    encode_progress=ebar.update)
    if res.trained:
        _echo(f"trained {r.model}")
    if res.encode is None:
        return
    e = res.encode
    _note_leftovers(r.out)
    what = f"part {part}/{r.parts} of {r.out}" if part else r.out
    _echo(f"wrote {what}: {e.times} times, {e.samples} samples in {e.seconds:.1f} s"
          + (f" (resumed, {e.chunks_skipped} chunk(s) already done)" if e.resumed else ""))


@command("cleanup")
def cleanup_cmd(
    path: Annotated[str, typer.Argument(help="An output (latent store, decoded file or store, "
                                             "checkpoint) that killed runs wrote to.")],
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="List what would be removed; remove nothing.")] = False,
    min_age: Annotated[float, typer.Option(
        min=0, help="Seconds a temporary must have stayed unchanged to count as left behind "
                    "(a live decode or training run has no lock but keeps writing).")] = 300.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Remove what killed runs left at an output: temporary directories and files, stale locks,
    half-written chunk files. Live locks and anything else are left alone."""
    import json

    from era5latent.store.cleanup import cleanup

    res = cleanup(path, dry_run=dry_run, min_age=min_age)
    if json_out:
        print(json.dumps(res.to_dict(), indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    for item in res.removed:
        _echo(f"{verb} {item.path} ({item.why})")
    for item in res.kept:
        _echo(f"kept {item.path} ({item.why})")
    if not res.removed:
        _echo(f"{path}: nothing left behind by killed runs")
