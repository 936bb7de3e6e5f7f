"""Generate docs/cli.md from the Typer app (``make docs``); a test keeps the file in sync."""

from __future__ import annotations

from enum import Enum

import typer.main

from era5latent.cli import app
from era5latent.cli.rules import RULES, flag


def render() -> str:
    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="era5latent")  # typer vendors its own click
    out = ["# Command-line reference", "",
           "Generated from the Typer app by `make docs` (`python -m era5latent.cli.docs`); "
           "`tests/test_cli_docs.py` fails when it is out of date.", "",
           "Exit codes: 0 success; 2 bad input or usage (one line on stderr, no traceback); "
           "3 `verify` found a problem; 1 a bug.", "",
           "Global options, before the command: `--version` prints the version; `--quiet` (`-q`) "
           "silences progress. Progress goes to stderr: a bar on a terminal, elsewhere (scripts, "
           "batch jobs) a line such as `encode: 42.0% (420/1000 samples), 12.3 samples/s, "
           "ETA 0:00:47` every 30 seconds, and at the end of a run that took that long (a "
           "quicker run prints only its result, or its one error line).", "",
           "An option that takes effect only together with another (listed under each command) "
           "is refused when given without it: exit 2 and one line saying what "
           "it needs, what was found and the fix; no option is accepted and then ignored.", ""]
    for name in root.list_commands(ctx):  # type: ignore[attr-defined]
        cmd = root.get_command(ctx, name)  # type: ignore[attr-defined]
        sub = cmd.context_class(cmd, info_name=name, parent=ctx)
        out += [f"## `era5latent {name}`", "", (cmd.help or "").strip(), "", "```text",
                " ".join(cmd.collect_usage_pieces(sub)).join(
                    (f"era5latent {name} ", "")), "```", ""]
        rows = []
        for p in cmd.params:
            if p.param_type_name == "argument":
                rows.append((f"`{(p.name or '').upper()}`", "argument", getattr(p, "help", "") or "", ""))
            elif p.param_type_name == "option" and p.name != "help":
                flags = ", ".join(f"`{o}`" for o in (*p.opts, *p.secondary_opts))
                value = p.default.value if isinstance(p.default, Enum) else p.default
                default = "" if value is None or value is False or p.required else f"`{value}`"
                rows.append((flags, "required" if p.required else "", p.help or "", default))
        if rows:
            out += ["| option | | meaning | default |", "|---|---|---|---|"]
            out += [f"| {a} | {b} | {c.replace('|', '/')} | {d} |" for a, b, c, d in rows]
            out.append("")
        needs = [f"- `{flag(cmd, n.option)}` {n.expected}; refused when {n.found}."
                 for n in RULES.get(name, ())]
        if needs:
            out += ["Options that need another (given without it, refused with exit 2):", "",
                    *needs, ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
