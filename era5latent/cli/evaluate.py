"""The ``evaluate`` command: what compression cost, beside classical codecs
(:mod:`era5latent.evaluation`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from era5latent.cli.common import Bar, Device, Step, TimeAxis, TimeRange, command, echo
from era5latent.errors import OptionError


@command("evaluate")
def evaluate_cmd(
    truth: Annotated[str, typer.Argument(help="The original ERA5 data (Zarr, NetCDF or GRIB).")],
    recon: Annotated[Optional[str], typer.Argument(
        help="Its reconstruction (from 'era5latent decode'); omit to decode --latent on the fly, "
             "or to encode and decode TRUTH with --model (any checkpoint of a run).")] = None,
    latent: Annotated[Optional[str], typer.Option(
        help="The latent store (gives the WLA's bytes; with --model, decodes on the fly).")] = None,
    model: Annotated[Optional[Path], typer.Option(help="Checkpoint, to decode --latent.")] = None,
    baselines: Annotated[str, typer.Option(
        help="Classical codecs at the same bytes per value: bitround, xbitinfo-99, "
             "xbitinfo-99.9, zfp, zfp-accuracy, sz3, ebcc (slow; not in all), pcodec, all or "
             "none. Rows that miss the WLA's size by over 10% are marked.")] = "bitround,zfp",
    sweep: Annotated[Optional[str], typer.Option(
        help="Bytes per value for the rate-distortion sweep (default: 0.5x..16x the WLA's).")] = None,
    subset: Annotated[Optional[str], typer.Option(help="Evaluate only these channels.")] = None,
    time: TimeRange = None,
    time_axis: TimeAxis = "valid",
    step: Step = None,
    climatology: Annotated[Optional[str], typer.Option(
        help="Climatology for ACC: a WeatherBench 2 climatology (dims hour/dayofyear; each "
             "sample gets its hour and day of year) or any store (its time mean); default: the "
             "truth's own time mean.")] = None,
    region: Annotated[str, typer.Option(
        help="Spatial means over: global, tropics, extra-tropics, northern-extra-tropics, "
             "southern-extra-tropics, or a box LAT0,LAT1,LON0,LON1 (WeatherBench 2 regions).")
    ] = "global",
    time_chunk: Annotated[Optional[int], typer.Option(
        help="Time steps read and scored at once (memory is bounded by one chunk); default: "
             "about 4M values per chunk.", min=1)] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write PNG maps, spectra and curves here.")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write records as JSON here "
                                                      "('-' for stdout).")] = None,
    device: Device = "auto",
) -> None:
    """Measure what compression cost, per channel, beside classical codecs at equal bytes."""
    import json
    import tempfile

    from era5latent.errors import OptionError
    from era5latent.evaluation.score import evaluate
    from era5latent.io.sources import open_source
    from era5latent.store.core import open_latent_store
    from era5latent.io.variables import parse_subset

    channels = parse_subset(subset) if subset else None
    store = open_latent_store(latent) if latent else None
    sweep_bpv = None
    if sweep:
        try:
            sweep_bpv = [float(x) for x in sweep.split(",") if x.strip()]
        except ValueError:
            raise OptionError(f"--sweep {sweep!r}: expected comma-separated bytes per value, "
                              "e.g. 0.05,0.1,0.5") from None
    with tempfile.TemporaryDirectory(prefix="era5latent-eval-") as tmp:
        if recon is None:
            if model is None:
                raise OptionError("evaluate needs RECON, or --model (with --latent to decode a "
                                  "store, without it to encode and decode TRUTH on the fly)")
            from era5latent.model.checkpoint import load_checkpoint
            from era5latent.pipeline import decode

            if latent is None:  # score a checkpoint (any of a run's) on TRUTH directly
                latent = _encode_for_scoring(truth, load_checkpoint(str(model)), channels, time,
                                             device, str(Path(tmp) / "latent.zarr"),
                                             time_axis=time_axis, step=step)
                store = open_latent_store(latent)
            recon = str(Path(tmp) / "recon.zarr")
            decode(latent, load_checkpoint(str(model)), recon, subset=channels, time_range=time,
                   device=device)
        with Bar("evaluate", "steps") as bar:
            report = evaluate(open_source(truth, time_axis=time_axis, step=step),
                              open_source(recon), subset=channels, time_range=time,
                              latent=store, climatology=climatology,
                              baselines=[b for b in baselines.split(",") if b.strip()],
                              sweep=sweep_bpv, plot_dir=str(plot) if plot else None,
                              region=region, time_chunk=time_chunk,
                              progress=lambda d, n, ch: bar.update(d, n, ch))
    doc = {"acc_reference": report.acc_reference, "region": report.region,
           "time_chunk": report.time_chunk, "records": report.records,
           "sweep": report.sweep, "plots": report.plots}
    if json_path is not None:
        text = json.dumps(doc, indent=2, default=float)
        if str(json_path) == "-":
            print(text)
            return
        json_path.write_text(text)
    _print_eval(report.records, report.acc_reference, report.region)
    if plot:
        echo(f"plots: {len(report.plots)} PNG files in {plot}")
    if json_path is not None:
        echo(f"records: {json_path}")


def _encode_for_scoring(truth: str, loaded: object, channels: object, time: str | None,
                        device: str, out: str, *, time_axis: str = "valid",
                        step: str | None = None) -> str:
    """TRUTH's channels that the model was trained on (or ``--subset``), encoded into ``out``
    (TRUTH opened as it is scored: the same ``--time-axis`` and ``--step``)."""
    from era5latent.model.checkpoint import LoadedModel
    from era5latent.pipeline import encode
    from era5latent.io.sources import open_source

    assert isinstance(loaded, LoadedModel)
    source = open_source(truth, time_axis=time_axis, step=step)
    have = set(source.available())
    chs = channels or tuple(c for g in loaded.meta.groups.values() for c in g if c in have)
    if not chs:
        raise OptionError(f"{truth} holds none of the channels the model was trained on; pass "
                          "data with them, or --subset")
    encode(source, loaded, chs, out, time_range=time, device=device)  # type: ignore[arg-type]
    return out


def _print_eval(records: list[dict[str, object]], acc_reference: str, region: str = "global"
                ) -> None:
    from rich.console import Console
    from rich.table import Table

    def f(v: object, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    table = Table("channel", "method", "RMSE", "bias", "MAE", "max |err|", f"ACC ({acc_reference})",
                  "small-scale power", "bytes/value", "size", "ratio vs f32", "ratio vs source",
                  title="reconstruction error (latitude-weighted, WeatherBench 2 definitions"
                        + ("" if region == "global" else f", region {region}") + ")")
    notes = set()
    for r in records:
        flags = r.get("size_flags")
        size = "-"
        if isinstance(flags, list):  # baselines: matched within 10% of the WLA's size, or not
            size = "matched" if r.get("size_matched") else "NOT matched"
            if "all_zero" in flags:
                size += ", ALL ZERO"
            if "fixed_size" in flags:
                size += " (fixed)"
            notes.update(flags)
        table.add_row(str(r["channel"]), str(r["method"]), f(r["rmse"], ".4g"), f(r["bias"], ".3g"),
                      f(r["mae"], ".4g"), f(r["max_abs_error"], ".4g"), f(r["acc"], ".4f"),
                      f(r["small_scale_power_ratio"], ".3f"), f(r["bytes_per_value"], ".4f"),
                      size, f(r["compression_ratio"], ".1f"), f(r["compression_ratio_source"], ".1f"))
    con = Console(highlight=False, width=220)
    con.print(table)
    layered = [r for r in records if r.get("codes_bytes_per_value") is not None]
    if layered:  # a store with a residual layer (docs/residuals.md)
        lt = Table("channel", "codes B/value", "residuals B/value", "both", "ratio codes",
                   "ratio residuals", "ratio both", "max |err|", "bound", "within bound",
                   title="the latent store's two layers")
        for r in layered:
            applied, within = r.get("residual_applied"), r.get("within_bound")
            codes, res = float(r["codes_bytes_per_value"]), float(r["residual_bytes_per_value"])  # type: ignore[arg-type]
            lt.add_row(str(r["channel"]), f(r["codes_bytes_per_value"], ".4f"),
                       f(r["residual_bytes_per_value"], ".4f"),
                       f(codes + res, ".4f"),
                       f(r["codes_ratio"], ".1f"), f(r["residual_ratio"], ".1f"),
                       f(r["total_ratio"], ".1f"), f(r["max_abs_error"], ".4g"),
                       f(r["max_error_bound"], ".4g"),
                       ("yes" if within is True else "NO" if within is False else "-")
                       + ("" if applied else " (decoded without residuals)" if applied is False
                          else " (unknown: not decoded by era5latent)"))
        con.print(lt)
    if "size_off" in notes:
        con.print("NOT matched: the codec could not get within 10% of the WLA's bytes per value; "
                  "its row is at the bytes shown, not at equal bytes.")
    if "all_zero" in notes:
        con.print("ALL ZERO: the codec returned zeros for every value (zfp fixed rate at its "
                  "floor does); its errors are those of a zero field.")
    if "fixed_size" in notes:
        con.print("(fixed): the codec's size follows from the data (xbitinfo keepbits, lossless "
                  "pcodec); no setting reaches another size.")
