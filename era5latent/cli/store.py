"""The commands on a latent store as it is: ``finalize``, ``info``, ``verify``, and ``cleanup`` of
what killed runs left at any output (:mod:`era5latent.store`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from era5latent.cli.common import code_usage_line, command, echo


PartsCount = Annotated[Optional[int], typer.Option(
    "--parts", min=1, metavar="N", show_default=False,
    help="Report build progress as N parts (default: the N of the 'encode --parts I/N' run "
         "that created the store, if any).")]


@command("finalize")
def finalize_cmd(
    store: Annotated[str, typer.Argument(help="Latent store written by 'encode --parts I/N' runs.")],
    parts: PartsCount = None,
    break_lock: Annotated[bool, typer.Option(
        "--break-lock", help="Clear writers' locks although they may be alive.")] = False,
) -> None:
    """Mark a latent store complete once every time chunk is written (after 'encode --parts').

    Refuses, naming the parts and time chunks still missing, while any is unwritten, and while
    any writer of the store is alive.
    """
    from era5latent.api import finalize

    res = finalize(store, parts=parts, break_lock=break_lock)
    echo(f"{store}: {'already complete' if res.already else 'complete'} "
          f"({res.chunks} time chunks)")


@command("info")
def info_cmd(
    store: Annotated[str, typer.Argument(help="Latent store.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    parts: PartsCount = None,
) -> None:
    """Show a latent store: groups, channels, times, bytes, compression, build progress."""
    import json

    from era5latent.evaluation.bitusage import with_usage
    from era5latent.recipe import recipe_of, to_yaml
    from era5latent.store.info import summary

    info = with_usage(summary(store, parts), store)
    recipe = recipe_of(store)
    if recipe is not None:
        info["recipe"] = recipe
    if json_out:
        print(json.dumps(info, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    status = "complete" if info["complete"] else (
        f"UNFINISHED: {info['chunks_done']} of {info['chunks_total']} time chunks written")
    tr = info["time_range"]
    lines = [f"{info['path']}  ({info['format']} v{info['format_version']}, {status})",
             f"times: {info['times']} ({tr[0]} .. {tr[1]})" if tr else "times: 0",
             f"grid: {info['grid'][0]}x{info['grid'][1]}"
             + "".join(f", {d}: {n}" for d, n in info["sample_dims"].items()),
             f"model: {info['model_preset']} sha256 {info['model_sha256'][:16]}",
             f"source: {info['source']}"]
    if "parts" in info:
        p, n = info["parts"], info["parts"]["count"]
        missing = ", ".join(f"{i}/{n}" for i in p["missing"])
        lines.append(f"parts: {len(p['done'])} of {n} done" + (f" (missing {missing})"
                                                               if missing else ""))
    table = Table("group", "channels", "tokens", "bits", "on disk", "float32", "ratio")
    for g in info["groups"]:
        table.add_row(g["group"], ",".join(g["channels"]), "x".join(map(str, g["token_grid"])),
                      str(g["code_bits"]), _size(g["bytes_on_disk"]), _size(g["float32_bytes_written"]),
                      f"{g['compression_ratio']:.1f}x" if g["compression_ratio"] else "-")
    ratio = info["compression_ratio"]
    if not info["complete"]:
        lines.append(f"sizes and ratios: over the {info['chunks_done']} time chunks written so far")
    table.add_row("total", "", "", "", _size(info["bytes_on_disk"]), _size(info["float32_bytes_written"]),
                  f"{ratio:.1f}x" if ratio else "-")
    con = Console(highlight=False, soft_wrap=True)
    for line in lines:
        con.print(line)
    con.print(table)
    for g in info["groups"]:
        con.print(code_usage_line(g["group"], g["entropy_per_bit"], g["constant_bits"],
                                  g["bytes_per_value"], g["raw_bytes_per_value"],
                                  g["entropy_samples"], "samples")
                  + (f"; {g['chunks_unreadable']} damaged chunk(s) left out (run verify)"
                     if g["chunks_unreadable"] else ""))
    res = info["residual"]
    if res["present"]:  # the two layers (docs/residuals.md)
        layers = Table("layer", "on disk", "ratio")
        for name, n, r in (("codes", res["codes_bytes"], res["codes_ratio"]),
                           (f"residuals ({res['codec']})", res["residual_bytes"],
                            res["residual_ratio"]),
                           ("both", res["codes_bytes"] + res["residual_bytes"], res["total_ratio"])):
            layers.add_row(name, _size(n), f"{r:.1f}x" if r else "-")
        con.print(layers)
        con.print("max error (decode in fp32): " + ", ".join(
            f"{c} {b['max_error']:.4g} {b['units']}" for c, b in res["channels"].items())
            + f"  (--max-error {res['spec']})")
    if recipe is not None:
        con.print("built from this recipe ('era5latent build' of it reproduces the store):")
        con.print(to_yaml(recipe).rstrip(), markup=False)


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
        echo(f"{verb} {item.path} ({item.why})")
    for item in res.kept:
        echo(f"kept {item.path} ({item.why})")
    if not res.removed:
        echo(f"{path}: nothing left behind by killed runs")


@command("verify")
def verify_cmd(
    store: Annotated[str, typer.Argument(help="Latent store.")],
    model: Annotated[Optional[Path], typer.Option(
        help="Also check that the store was made with this checkpoint.")] = None,
) -> None:
    """Check a latent store's integrity: format, attributes, metadata, build, every array, model.

    Prints one line per check, and one per array: every chunk of every array is read (its crc32c
    checked; codes also against their sha256). Exit code 0 when all pass, 3 when any fails,
    naming the array (or metadata document) and chunk.
    """
    from era5latent.api import verify

    checks = verify(store, model)
    for c in checks:
        print(f"{'PASS' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
    if not all(c.ok for c in checks):
        raise typer.Exit(3)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)
