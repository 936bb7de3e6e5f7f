"""The ``sample`` command: ERA5-like sample data (:mod:`era5latent.io.sample`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from era5latent.cli.common import command, echo


@command("sample")
def sample_cmd(
    out: Annotated[Path, typer.Argument(help="Output Zarr store (WeatherBench 2 layout).")],
    grid: Annotated[str, typer.Option(help="NLATxNLON, both poles included.")] = "73x144",
    times: Annotated[int, typer.Option(min=1, help="Number of time steps.")] = 64,
    start: Annotated[str, typer.Option(help="First time (ISO).")] = "2020-01-01T00",
    freq: Annotated[str, typer.Option(help="Time step (pandas frequency, e.g. 6h, 1h).")] = "6h",
    variables: Annotated[str, typer.Option(help="Comma-separated short names.")] =
        "z,t,u,v,q,t2m,u10,v10,msl",
    levels: Annotated[str, typer.Option(help="Comma-separated pressure levels (hPa).")] =
        "50,100,150,200,250,300,400,500,600,700,850,925,1000",
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
) -> None:
    """Write ERA5-like sample data (calibrated against real ERA5) in WeatherBench 2 layout."""
    from era5latent.errors import OptionError
    from era5latent.io.sample import parse_grid, write_sample

    try:
        levs = tuple(int(x) for x in levels.split(",") if x.strip())
    except ValueError:
        raise OptionError(f"--levels {levels!r}: expected comma-separated integers (hPa)") from None
    vars_ = tuple(v.strip() for v in variables.split(",") if v.strip())
    ds = write_sample(str(out), grid=parse_grid(grid), times=times, start=start, freq=freq,
                      variables=vars_, levels=levs, seed=seed, overwrite=overwrite)
    echo(f"wrote {out}: {len(ds.data_vars)} variables, {ds.sizes['time']} times, grid "
          f"{ds.sizes['latitude']}x{ds.sizes['longitude']}")
