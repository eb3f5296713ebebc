"""Held-out evaluation of trained weights on phantom folders, and publishing them with their card.

    python recipes/evaluate_shipped.py runs/shipped/twin/best.safetensors \
        runs/phantoms/val runs/phantoms/unseen [--publish weights/densebiasnet.safetensors]

The phantom folders are those ``recipes/make_training_phantoms.py`` writes;
``recipes/shipped_weights.sh`` runs this on each model it finishes.

Each case goes through ``Segmenter.predict`` (the shipped inference: sliding windows on
the card's window, Gaussian blending) and ``renalseg.metrics.evaluate_masks`` (Dice,
MCD, MSD, HD, HD95 in mm) of the arg-max map; ``dice_segment`` and ``segment_*``: the
same metrics after the clean-up ``renalseg segment`` applies by default
(``renalseg.postprocess.clean_labels``: the main tree, ``--max-gap-mm``, then the speck
removal, ``--min-component-mm3``); and ``found_<band>``: the share of the true
centerline found, by vessel diameter
(``renalseg.metrics.found_by_diameter``: < 2 mm interlobar/arcuate, 2–4 mm,
>= 4 mm main artery and divisions).
``--tta`` runs each case with mirroring test-time augmentation, as ``renalseg segment
--tta`` (on by default on CUDA); its figures are stored as ``FOLDER_tta``.
With ``--publish`` the weights are re-saved with a card whose ``metrics`` hold these
held-out figures (``save_model`` recomputes the sha256).

A model that labels more than the artery (KiPA22's four structures), or any model with
``--by-structure`` or ``--compare``, is scored as ``renalseg segment --input-is-roi``
writes each case (the phantoms are ROI crops): ``renalseg.pipeline.segment_study``,
with its topology clean-up (artery pieces on the aorta's tree, vein pieces on the
IVC's, when both are found in the crop) and its multi-class clean-up, the written
KiPA22 map against the true one (``renalseg.metrics.structure_scores``): ``dice_vein``,
``dice_kidney``, ``dice_artery``, ``dice_tumour`` (on the cases with a tumour;
``tumour_ml_where_none`` on the others), ``vein_as_artery`` (the share of true renal-vein
voxels labelled artery), ``artery_as_vein``, ``artery_hd95_mm``, ``artery_mcd_mm``,
``found_<band>`` of the artery (``found_0-2mm``: the thin-branch figure) and
``topology_on`` (the share of cases where the aorta and IVC were found).
``--compare OTHER.safetensors`` scores a second model on the same cases the same way
(e.g. the artery-only weights): its figures are ``compare_<name>``, so a card can
say what a new model kept or lost against it on the same cases.

    python recipes/evaluate_shipped.py runs/shipped/four/best.safetensors \
        runs/phantoms/four_art runs/phantoms/four_pv --overlap 0.5 \
        --compare weights/dpa_densebiasnet_artery.safetensors

``--artery-weight W`` multiplies the network's artery probability by W (the classes
renormalised) before ``segment`` labels and cleans each case: what favouring the
artery in the arg-max trades (Dice against thin branches and vein taken for artery).
An experiment, not a ``segment`` option; not with ``--publish``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from renalseg.errors import DataLayoutError, GeometryError
from renalseg.geometry import Geometry, assert_same_grid
from renalseg.io.image import read_image
from renalseg.labels import BY_KEY, STRUCTURE_KEYS, output_values
from renalseg.metrics import dice, evaluate_masks, found_by_diameter, structure_scores, summarize
from renalseg.pipeline import SegmentConfig, batch_thin_branch_segmenter, segment_study
from renalseg.postprocess import DEFAULT_MAX_GAP_MM, DEFAULT_MIN_COMPONENT_MM3, clean_labels
from renalseg.segmenter import Segmenter, load_model
from renalseg.training.data import find_cases, load_cases, parse_label_map
from renalseg.weights import load_model_files, model_paths, save_model

#: what the by-structure figures measure, stored in a published card beside them
AS_WRITTEN = ("as `renalseg segment --input-is-roi` writes each case (renalseg.pipeline.segment_study: the "
              "topology clean-up where the aorta and IVC are found, then the multi-class clean-up), against the "
              "true KiPA22 map (renalseg.metrics.structure_scores): dice per structure (tumour on the cases with "
              "one), vein_as_artery = share of true renal-vein voxels labelled artery, found_<band> = share of "
              "the true artery centerline found by vessel diameter (found_0-2mm: the thin branches); compare_*: "
              "the same figures of the compared weights on the same cases")


def evaluate_folder(segmenter, folder: Path, overlap: float, tta: bool = False) -> dict:
    cases = load_cases(find_cases(folder), spacing_xyz_mm=segmenter.spec.spacing_xyz_mm,
                       label_map=parse_label_map("3:renal_artery"))
    rows = []
    for case in cases:
        t0 = time.perf_counter()
        probabilities = segmenter.predict(case.image_hu, overlap=overlap, tta=tta)
        prediction = np.argmax(probabilities, axis=0) == 1
        truth = case.label == 1
        # what `renalseg segment` writes: the same map after its default clean-up
        cleaned = clean_labels(prediction.astype(np.uint8), spacing_xyz_mm=case.geometry.spacing_xyz_mm,
                               min_component_mm3=DEFAULT_MIN_COMPONENT_MM3, max_gap_mm=DEFAULT_MAX_GAP_MM) > 0
        row = {"case": case.case_id, **evaluate_masks(prediction, truth, case.geometry.spacing_xyz_mm),
               "dice_segment": dice(cleaned, truth),
               **{f"segment_{k}": v for k, v in evaluate_masks(cleaned, truth, case.geometry.spacing_xyz_mm).items()
                  if k != "dice"},
               **{f"segment_{k}": v
                  for k, v in found_by_diameter(cleaned, truth, case.geometry.spacing_xyz_mm).items()},
               **found_by_diameter(prediction, truth, case.geometry.spacing_xyz_mm),
               "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k not in ("case", "seconds")]
    # a band no vessel of a case falls in is NaN there: nanmean, with the count used
    summary = {k: {"mean": float(np.nanmean([r[k] for r in rows])), "std": float(np.nanstd([r[k] for r in rows])),
                   "n": int(np.sum(np.isfinite([r[k] for r in rows])))} for k in keys}
    return {"folder": str(folder), "cases": rows, "summary": summary}


def with_artery_weight(segmenter: Segmenter, weight: float) -> Segmenter:
    """A copy of ``segmenter`` whose ``predict`` returns the artery probability times
    ``weight``, every voxel's probabilities renormalised to sum to 1."""
    artery = next(c for c, v in output_values(segmenter.spec.classes).items() if v == BY_KEY["artery"].value)
    weighted = dataclasses.replace(segmenter)

    def predict(roi, **options):
        probabilities = segmenter.predict(roi, **options)
        probabilities[artery] *= weight
        probabilities /= probabilities.sum(axis=0, keepdims=True)
        return probabilities

    weighted.predict = predict  # type: ignore[method-assign]
    return weighted


def structures_of(segmenter: Segmenter) -> tuple[str, ...]:
    """The structure keys a model labels, from its classes (``("artery",)`` for the artery-only model)."""
    values = set(output_values(segmenter.spec.classes).values())
    return tuple(key for key in STRUCTURE_KEYS if BY_KEY[key].value in values)


def score_as_written(segmenter: Segmenter, image: sitk.Image, truth: np.ndarray, overlap: float,
                     tta: bool = False, artery_segmenter: Segmenter | None = None,
                     thin_branches: bool | None = False) -> dict:
    """One ROI-crop case through ``segment_study`` as ``renalseg segment --input-is-roi`` runs it
    (``thin_branches``: as ``SegmentConfig.thin_branches``; ``None`` = segment's default);
    the written label map's :func:`renalseg.metrics.structure_scores` against ``truth`` (KiPA22
    values, the image's grid), ``topology_on`` (1 where the aorta and IVC were both found, 0
    where not, NaN for a model without both vessels), ``thin_applied`` (1 where the
    thin-branch pass ran) and ``seconds``."""
    started = time.perf_counter()
    config = SegmentConfig(input_is_roi=True, weights=segmenter.weights_path, overlap=overlap, tta=tta,
                           thin_branches=thin_branches)
    result = segment_study(image, config, segmenter=segmenter, artery_segmenter=artery_segmenter)
    written = sitk.GetArrayFromImage(result.labels)
    row = structure_scores(written, truth, image.GetSpacing(), structures=structures_of(segmenter))
    roots = result.report.get("topology", {}).get("roots")
    row["topology_on"] = float(all("found" in r for r in roots)) if roots else float("nan")
    row["thin_applied"] = float(result.report.get("thin_branches", {}).get("applied", False))
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def evaluate_folder_as_written(segmenter: Segmenter, folder: Path, overlap: float, tta: bool = False,
                               compare: Segmenter | None = None, artery_segmenter: Segmenter | None = None,
                               thin_branches: bool | None = False) -> dict:
    """:func:`score_as_written` for each case of a phantom folder (and of ``compare``'s model,
    its figures prefixed ``compare_``); per-folder mean, std and the count of cases a figure
    is defined on (``dice_tumour``: the cases with a tumour)."""
    rows = []
    for files in find_cases(folder):
        image = read_image(files.image)
        label = read_image(files.label)  # type: ignore[arg-type]
        try:
            assert_same_grid(Geometry.from_sitk(image), Geometry.from_sitk(label), names=("image", "label"))
        except GeometryError as err:
            raise DataLayoutError(f"case '{files.case_id}': the label is not on the image's grid.\n{err}") from err
        truth = sitk.GetArrayFromImage(label)
        row = {"case": files.case_id, **score_as_written(segmenter, image, truth, overlap, tta, artery_segmenter,
                                                                thin_branches)}
        if compare is not None:
            row.update({f"compare_{k}": v for k, v in score_as_written(compare, image, truth, overlap, tta,
                                                                       thin_branches=thin_branches).items()})
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k != "case" and not k.endswith("seconds")]
    summary = {k: {name: (None if isinstance(v, float) and not np.isfinite(v) else v) for name, v in figure.items()}
               for k, figure in summarize(rows, keys).items()}
    def identity(model: Segmenter) -> dict:
        return {"weights": str(model.weights_path) if model.weights_path else None, "sha256": model.spec.sha256,
                "structures": list(structures_of(model))}

    out = {"folder": str(folder), "scoring": "as_written", **identity(segmenter), "cases": rows, "summary": summary}
    if compare is not None:
        out["compare"] = identity(compare)
    return out


def _mean(summary: dict, key: str) -> str:
    figure = summary.get(key)
    if not figure or figure.get("mean") is None:
        return "–"
    return f"{figure['mean']:.3f}" + (f" (n {figure['n']})" if key.endswith("tumour") else "")


def as_written_table(results: dict) -> str:
    """A Markdown table of the by-structure figures, one row per folder (and per compared model)."""
    lines = ["| set | weights | Dice vein | kidney | artery | tumour | vein labelled artery | "
             "artery centerline found < 2 / 2–4 / ≥ 4 mm |", "|---|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        if result.get("scoring") != "as_written":
            continue
        evaluated = Path(result.get("weights") or "evaluated").name
        compared = Path(result["compare"]["weights"] or "compared").name if "compare" in result else None
        prefixes = [("", evaluated)] + ([("compare_", compared)] if compared else [])
        for prefix, label in prefixes:
            s = {k[len(prefix):]: v for k, v in result["summary"].items() if k.startswith(prefix)} if prefix \
                else {k: v for k, v in result["summary"].items() if not k.startswith("compare_")}
            found = " / ".join(_mean(s, f"found_{band}").split(" ")[0] for band in ("0-2mm", "2-4mm", "4mm+"))
            lines.append(f"| {name} | {label} | {_mean(s, 'dice_vein')} | {_mean(s, 'dice_kidney')} | "
                         f"{_mean(s, 'dice_artery')} | {_mean(s, 'dice_tumour')} | {_mean(s, 'vein_as_artery')} | "
                         f"{found} |")
    return "\n".join(lines)


def card_metrics(results: dict, old_metrics: dict, overlap: float) -> dict:
    """A published card's ``metrics``: each folder's case names and summary figures
    (``held_out``), how they were measured, and the training's selection record
    (``old_metrics``: a trained run's card, or a published card's ``selection``)."""
    as_written = [r for r in results.values() if r.get("scoring") == "as_written"]
    compared = [r["compare"] for r in as_written if "compare" in r]
    return {"held_out": {name: {"cases": [row["case"] for row in result["cases"]], **result["summary"]}
                         for name, result in results.items()},
            "held_out_overlap": overlap,
            # what dice_segment / segment_* (and the as-written figures) measured: `renalseg segment`'s clean-up
            "segment_clean_up": {"max_gap_mm": DEFAULT_MAX_GAP_MM, "min_component_mm3": DEFAULT_MIN_COMPONENT_MM3},
            **({"held_out_scoring": AS_WRITTEN, "structures": as_written[0]["structures"]} if as_written else {}),
            **({"compared_with": compared[0]} if compared else {}),
            # re-publishing published weights (new figures) keeps their selection record
            "selection": old_metrics.get("selection", old_metrics) if "held_out" in old_metrics else old_metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("weights", type=Path)
    parser.add_argument("folders", type=Path, nargs="*")
    parser.add_argument("--results", type=Path, nargs="*", default=[],
                        help="--json files of earlier runs (e.g. folders evaluated in parallel) to publish")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tta", action="store_true",
                        help="mirroring test-time augmentation, as `renalseg segment --tta` (8x the work)")
    parser.add_argument("--by-structure", action="store_true",
                        help="score as `renalseg segment --input-is-roi` writes each case, per structure (the "
                             "default for a model that labels more than the artery)")
    parser.add_argument("--compare", type=Path,
                        help="also score these weights on the same cases, as written (implies --by-structure); "
                             "their figures are compare_*")
    parser.add_argument("--thin-branches", nargs="?", const="on", default="off", choices=("on", "off", "auto"),
                        help="on (the bare flag): score as `renalseg segment --thin-branches` writes each case (the "
                             "artery-only weights for the artery inside the kidney); auto: as `renalseg segment` "
                             "writes it by default (the pass where the crop's phase is called arterial); off (the "
                             "default): one network pass, as `--no-thin-branches`")
    parser.add_argument("--artery-weight", type=float, default=1.0,
                        help="multiply the artery probability by this before labelling (an experiment)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--publish", type=Path, help="write the weights + card with these metrics here")
    parser.add_argument("--limits", type=Path, help="with --publish: a JSON file of the card's limits block (what "
                                                      "the weights were validated on, the quality verdict's "
                                                      "thresholds; renalseg.quality.limits_from_card)")
    parser.add_argument("--history", help="with --publish: how the weights came to be (runs before the last "
                                          "one, e.g. the phases a --init chain went through); card training.history")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    results = {}
    for stored in args.results:
        results.update(json.loads(stored.read_text()))
    thin_branches = {"on": True, "off": False, "auto": None}[args.thin_branches]
    if args.publish and (args.artery_weight != 1.0 or thin_branches is not False):
        parser.error("--artery-weight and --thin-branches change what the weights alone write; drop --publish")
    if args.folders:
        segmenter = load_model(args.weights, device="cpu")
        if args.artery_weight != 1.0:
            segmenter = with_artery_weight(segmenter, args.artery_weight)
        compare = load_model(args.compare, device="cpu") if args.compare else None
        # the pair segment --thin-branches runs, checked once before the first case
        artery_segmenter = batch_thin_branch_segmenter(segmenter, thin_branches, device="cpu")
        by_structure = args.by_structure or compare is not None or structures_of(segmenter) != ("artery",)
        suffix = "_tta" if args.tta else ""  # a TTA run's figures under their own name, e.g. val40_tta
        for folder in args.folders:
            results[folder.name + suffix] = (
                evaluate_folder_as_written(segmenter, folder, args.overlap, args.tta, compare, artery_segmenter,
                                           thin_branches)
                if by_structure
                else evaluate_folder(segmenter, folder, args.overlap, args.tta))
    print(json.dumps({k: v["summary"] for k, v in results.items()}, indent=1))
    if any(r.get("scoring") == "as_written" for r in results.values()):
        print(as_written_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.publish:
        network, card = load_model_files(args.weights)
        metrics = card_metrics(results, card.metrics, args.overlap)
        training = dict(card.training, **({"history": args.history} if args.history else {}))
        limits = json.loads(args.limits.read_text()) if args.limits else card.limits
        card = dataclasses.replace(card, metrics=metrics, training=training, limits=limits,
                                   synthetic_training_only=True)
        if model_paths(args.publish)[0].resolve() == model_paths(args.weights)[0].resolve():
            # new figures for the same tensors: only the card changes (the file and its sha256 stay)
            model_paths(args.publish)[1].write_text(card.to_json(), encoding="utf-8")
        else:
            save_model(network, card, args.publish)
        print(f"published {args.publish}")


if __name__ == "__main__":
    main()
