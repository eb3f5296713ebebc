"""``renalseg evaluate PRED... --gt GT...``: Dice, MCD, MSD, HD, HD95 per case."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from renalseg.cli.common import configure_logging, console, handle_errors

__all__ = ["register"]

_HEADERS = {"dice": "Dice", "mcd_mm": "MCD (mm)", "msd_mm": "MSD (mm)", "hd_mm": "HD (mm)", "hd95_mm": "HD95 (mm)"}


def _json_safe(value: object) -> object:
    """NaN (undefined distance) becomes ``null``: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _fmt(value: float, digits: int) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


@handle_errors
def evaluate(
    preds: Annotated[list[Path], typer.Argument(help="Predicted label files or folders (segment outputs).",
                                                show_default=False)],
    gt: Annotated[list[Path], typer.Option("--gt", help="Truth label file or folder; repeat for several.",
                                           show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", "-o",
                                             help="Write per-case metrics as CSV here (and JSON beside it).")] = None,
    label: Annotated[int | None, typer.Option("--label", help="Artery value in predictions "
                                              "(default: the only non-zero value).")] = None,
    gt_label: Annotated[int | None, typer.Option("--gt-label", help="Artery value in the truth "
                                                 "(default: the only non-zero value; KiPA22: 3).")] = None,
    structures: Annotated[str | None, typer.Option(
        "--structures", help="Score each of these structures against KiPA22 truth (1 renal vein, 2 kidney, "
        "3 renal artery, 4 tumour) instead of one artery label: 'artery,vein,kidney,tumour' or 'all'; a "
        "segment folder's labels.json gives their values in the prediction.", show_default=False)] = None,
    resample: Annotated[bool, typer.Option(help="Resample predictions onto the truth grid (nearest neighbour) "
                                                "when the grids differ.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print cases and summary as JSON on stdout.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file (and its JSON).")] = False,
) -> None:
    """The paper's metrics per case and mean ± std: Dice, MCD, MSD, HD, HD95 (mm).

    Pairs are matched by case name (file name, or folder name for segment output
    folders); a single prediction and a single truth are paired as given. With
    --structures, one row per case and structure and the mean ± std of each structure
    (a case whose truth has no tumour: its tumour metrics n/a, the volume labelled
    there given).

    Example: [bold]renalseg evaluate results/ --gt data/label/ --gt-label 3 --out metrics.csv[/], or
    for every structure against KiPA22 truth: [bold]renalseg evaluate results/ --gt kipa/label/ --structures all[/]
    """
    from renalseg.errors import OutputExistsError, UsageError
    from renalseg.labels import STRUCTURE_KEYS, parse_structures
    from renalseg.io.output import atomic_write_json, atomic_write_text, check_writable_folder
    from renalseg.metrics import FOUND_LABELS, FOUND_NAMES, METRIC_NAMES, evaluate_pairs, summarize

    configure_logging()
    if not gt:
        raise UsageError("Give the truth with --gt FILE_OR_FOLDER.")
    if out is not None:
        if out.suffix.lower() == ".json":
            raise UsageError(f"--out {out}: name the CSV file (e.g. metrics.csv); the JSON is written beside it.")
        check_writable_folder(out.parent)  # now, not after the computing
        taken = [str(p) for p in (out, out.with_suffix(".json")) if p.exists()]
        if taken and not overwrite:
            raise OutputExistsError(f"{' and '.join(taken)} exist(s); pass --overwrite to replace, or choose "
                                    "another --out.")
    keys = None
    if structures is not None:
        if label is not None or gt_label is not None:
            raise UsageError("--structures takes each structure's value from labels.json and KiPA22; "
                             "leave out --label and --gt-label (they pick one artery value).")
        keys = parse_structures(None if structures.strip().lower() == "all" else structures, STRUCTURE_KEYS)
    rows = evaluate_pairs(preds, gt, resample=resample, pred_label=label, gt_label=gt_label, structures=keys)
    names = (*METRIC_NAMES, *FOUND_NAMES)
    by_key = {key: [r for r in rows if r["structure"] == key] for key in keys or ()}
    if keys:
        summary = {key: summarize(of_key, keys=names) for key, of_key in by_key.items()}
    else:
        summary = summarize(rows, keys=names)
    columns = ["case", *(["structure"] if keys else []), *names, "pred_volume_ml", "gt_volume_ml", "pred", "gt"]
    if out is not None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()})
        atomic_write_text(out, buffer.getvalue())
        atomic_write_json(out.with_suffix(".json"), _json_safe({"cases": rows, "summary": summary}))
    if as_json:
        console.print_json(json.dumps(_json_safe({"cases": rows, "summary": summary})))
        return
    headers = {**_HEADERS, **dict(zip(FOUND_NAMES, FOUND_LABELS))}

    def mean_row(figures: dict) -> list[str]:  # n: the cases a figure is defined in (a tumour: those holding one)
        n = max(figures[m]["n"] for m in names)
        return [f"mean ± std (n={n})", *(f"{_fmt(figures[m]['mean'], 4 if m == 'dice' else 2)} ± "
                                         f"{_fmt(figures[m]['std'], 4 if m == 'dice' else 2)}" for m in names)]

    def figures_of(row: dict) -> list[str]:
        return [_fmt(row.get(m, math.nan), 4 if m == "dice" else 2) for m in names]

    if keys:
        table = Table("structure", "case", *(headers[m] for m in names))
        for key, of_key in by_key.items():
            for row in of_key:
                table.add_row(key, row["case"], *figures_of(row))
            table.add_row(key, *mean_row(summary[key]))
            table.add_section()
        undefined = any(summary[k][m]["n"] < len(of_key) for k, of_key in by_key.items() for m in names)
    else:
        table = Table("case", *(headers[m] for m in names))
        for row in rows:
            table.add_row(row["case"], *figures_of(row))
        table.add_section()
        table.add_row(*mean_row(summary))
        undefined = any(summary[m]["n"] < len(rows) for m in names)
    console.print(table)
    console.print(f"{', '.join(FOUND_LABELS)}: the share of the true centerline found (a predicted voxel within "
                  "one voxel), by vessel diameter.")
    if undefined:
        console.print("n/a: undefined (a mask empty, no true vessel of that diameter, a structure the truth does "
                      "not hold, or a centerline figure of a kidney or tumour); left out of the mean.")
    if out is not None:
        console.print(f"Wrote {out} and {out.with_suffix('.json')}.")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
