"""The ``build`` command: a whole build from a recipe (:mod:`era5latent.recipe`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from era5latent.cli.common import Bar, command, echo, note_leftovers


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
    with Bar("train", "steps") as tbar, Bar("encode", "samples") as ebar:
        res = build(r, part=part, overwrite=overwrite, train_only=train_only,
                    train_progress=lambda s, n, loss: tbar.update(s, n, f"loss {loss:.4f}"),
                    encode_progress=ebar.update)
    if res.trained:
        echo(f"trained {r.model}")
    if res.encode is None:
        return
    e = res.encode
    note_leftovers(r.out)
    what = f"part {part}/{r.parts} of {r.out}" if part else r.out
    echo(f"wrote {what}: {e.times} times, {e.samples} samples in {e.seconds:.1f} s"
          + (f" (resumed, {e.chunks_skipped} chunk(s) already done)" if e.resumed else ""))
