"""Accuracy and speed of ``renalseg plan`` on held-out phantoms with tumours.

Synthesises N phantoms (seeds from 20000 on: never used for training) with a tumour
and their true territories (:mod:`renalseg.phantom.territory`), plans each on its
true labels and compares:

* **feeding branches**: the plan's feeding segmental territories, each mapped to the
  true segmental artery it overlaps most, against the true feeding segmental
  arteries (same rule: tumour + 5 mm margin share ≥ 5%); precision and recall summed
  over all cases (micro) and the mean per case;
* **territory agreement**: the share of kidney voxels whose plan territory maps to
  their true one (the same many-to-one mapping by largest overlap);
* **the main renal artery**: whether the plan's starts on the generator's main renal
  artery (not on an accessory artery whose branches touch its own in the label) and how
  far its end lies from the generator's division point; the true accessory arteries the
  plan roots on their own (``accessory_found``), and its roots (named accessory renal
  arteries) that start on no true accessory artery (``accessory_false``);
* **seconds per study** for the plan alone (the phantom synthesis is not counted).

``--leaf-oracle`` adds ``leaf_oracle``: the territory agreement the plan would reach if
each terminal branch's geodesic cell were grouped into the right segmental territory
(each cell mapped to the true territory it overlaps most). The gap between it and the
plan's agreement is what the grouping of terminal branches into segmental units costs;
the gap between it and ``bench_plan_ceiling.py`` is what the label map's terminal
branches cost against the true ones.

With ``--segment WEIGHTS`` each phantom is the crop ``renalseg segment`` places (the
kidney with the renal vessels' reach to the aorta and the IVC), segmented first as
``renalseg segment --input-is-roi`` writes it (weights that label the artery, the kidney
and the tumour, as the default ``weights/dpa_densebiasnet`` does), and the plan runs on
that written label map (``--thin-branches``: as ``renalseg segment --thin-branches`` writes
it, the artery-only weights' artery added inside the kidney); the truth it is scored
against is still the phantom's. ``--phase`` gives the phantoms a contrast phase
(:mod:`renalseg.phantom.phases`; default the arterial intensities as drawn).
``--labels-dir DIR`` keeps each written label map there (``seed_N.nii.gz``) and reuses it
when it is there, so a re-scoring does not segment again. ``--true tumour`` (or
``artery``, ``kidney``; comma-separated) swaps those structures of the written map for the
phantom's own before planning: what the plan would give were the network right about them,
so the loss of precision can be laid at the structure that costs it.
``--tumour-given sphere`` plans the tumour as ``renalseg plan --tumour-at X,Y,Z
--tumour-diameter-mm D`` takes it from a radiology report: a sphere of the phantom's true
tumour's longest diameter at its centre (the centroid of its largest piece), in place of
the map's tumour; ``--tumour-given point`` as ``--tumour-at X,Y,Z`` alone: the map's tumour
pieces within 10 mm of that centre, the others left out (none there: planned without a
tumour, as a missed one).

Usage:
    python benchmarks/bench_plan.py --cases 30 --seed 20000 [--kind roi|abdomen] [--json out.json]
    python benchmarks/bench_plan.py --cases 30 --seed 20000 --segment WEIGHTS.safetensors \
        [--phase portal-venous] [--threads 2] [--thin-branches]
    python benchmarks/bench_plan.py --cases 30 --seed 20000 --leaf-oracle
    python benchmarks/bench_plan.py --cases 10 --seed 20000 --segment WEIGHTS.safetensors \
        --labels-dir runs/plan_labels --true tumour
    python benchmarks/bench_plan.py --cases 30 --seed 20000 --tumour-given sphere
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from unittest import mock

import numpy as np
from scipy import ndimage

import renalseg.plan
from renalseg.errors import InputError
from renalseg.figures import largest_diameter_mm
from renalseg.phantom import synthesize_abdomen, synthesize_roi
from renalseg.phantom.territory import compare_plan
from renalseg.plan import PlanConfig, plan_labels, proposed_clamping, tumour_pieces_at, tumour_sphere, with_tumour
from renalseg.tree import STRUCTURE_26
from renalseg.volume import Volume

KIPA = {3: "artery", 2: "kidney", 4: "tumour"}
VALUE_OF = {name: value for value, name in KIPA.items()}


def with_true(labels: Volume, truth: Volume, structures: list[str]) -> Volume:
    """``labels`` with ``structures`` taken from ``truth``: their voxels in ``labels``
    become background, then ``truth``'s voxels of them are written over; the tumour as
    ``renalseg plan --tumour`` takes it (:func:`renalseg.plan.with_tumour`: not over the artery).

    Example:
        >>> from renalseg.geometry import Geometry
        >>> g = Geometry((1, 1, 3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> out = with_true(Volume(np.array([[[4, 2, 0]]], np.uint8), g),
        ...                 Volume(np.array([[[2, 2, 4]]], np.uint8), g), ["tumour"])
        >>> out.array.tolist()
        [[[0, 2, 4]]]
    """
    if "tumour" in structures:
        labels, _ = with_tumour(labels, truth.array == VALUE_OF["tumour"], KIPA)
    array = np.array(labels.array, copy=True)
    for name in structures:
        if name == "tumour":
            continue
        value = VALUE_OF[name]
        array[array == value] = 0
        array[truth.array == value] = value
    return Volume(array, labels.geometry)


def with_given_tumour(labels: Volume, truth: Volume, given: str) -> Volume:
    """``labels`` with the tumour as ``renalseg plan --tumour-at`` takes it, from the true
    tumour's centre (its largest piece's centroid, LPS mm) and longest diameter: a sphere
    (``given == "sphere"``) or the map's pieces within 10 mm of the centre (``"point"``;
    none there: no tumour)."""
    pieces, count = ndimage.label(truth.array == VALUE_OF["tumour"], structure=STRUCTURE_26)
    if not count:
        return labels
    largest = pieces == 1 + int(np.argmax(ndimage.sum(pieces > 0, pieces, range(1, count + 1))))
    centre = labels.geometry.index_to_world(np.array([ndimage.center_of_mass(largest)[::-1]]))[0]
    if given == "sphere":
        mask = tumour_sphere(labels.geometry, centre, largest_diameter_mm(largest, labels.geometry))
    else:
        try:
            mask = tumour_pieces_at(labels.array == VALUE_OF["tumour"], labels.geometry, centre)
        except InputError:
            mask = np.zeros(labels.array.shape, bool)
    return with_tumour(labels, mask, KIPA)[0]


def evaluate_case(case, result) -> list[dict]:  # noqa: ANN001
    """Per side: feeding TP/FP/FN, territory agreement, segmental counts
    (:func:`renalseg.phantom.territory.compare_plan`), the main renal artery against the
    generator's, with the phantom's seed."""
    rows = compare_plan(result.plan, result.territories.array, case.truth, case.territory.array,
                        case.label.array == 2)
    clamping = {k["side"]: k["clamping"] for k in result.plan["kidneys"]}
    kidneys = {k["side"]: k for k in result.plan["kidneys"]}
    out = []
    for row in rows:
        if "error" not in row:
            row = {**row, "seed": case.params["seed"], **clamping_facts(clamping.get(row["side"])),
                   **main_artery_facts(case.params["kidneys"][row["side"]]["tree"], kidneys.get(row["side"]))}
        out.append(row)
    return out


def _nearest_true_branch(tree: list[dict], point: list[float]) -> str:
    """The generator's branch whose straight start-to-end segment passes nearest ``point``."""
    p = np.asarray(point, float)

    def distance(branch: dict) -> float:
        a, b = np.asarray(branch["start_mm"], float), np.asarray(branch["end_mm"], float)
        t = np.clip(np.dot(p - a, b - a) / max(float(np.dot(b - a, b - a)), 1e-9), 0.0, 1.0)
        return float(np.linalg.norm(a + t * (b - a) - p))
    return min(tree, key=distance)["name"]


def main_artery_facts(tree: list[dict], kidney: dict | None) -> dict:
    """Whether the plan's main renal artery starts on the generator's main renal artery
    (``main_root_right``: its start lies nearest that branch), how far its end lies from
    the generator's division point (``main_end_off_mm``), and the plan's other roots
    (accessory arteries) that start on a true accessory artery and that do not."""
    accessory = {b["name"] for b in tree if b["kind"] == "accessory"}
    if not kidney or not kidney.get("roots"):
        return {"main_root_right": None, "main_end_off_mm": None, "accessory_true": len(accessory),
                "accessory_found": 0, "accessory_false": 0}
    by_id = {b["id"]: b for b in kidney["branches"]}
    main = by_id[kidney["roots"][0]]
    true_main = next(b for b in tree if b["kind"] == "main")
    others = [_nearest_true_branch(tree, by_id[r]["start_mm"]) for r in kidney["roots"][1:]]
    return {"main_root_right": _nearest_true_branch(tree, main["start_mm"]) == true_main["name"],
            "main_end_off_mm": round(float(np.linalg.norm(np.subtract(main["end_mm"], true_main["end_mm"]))), 1),
            "accessory_true": len(accessory), "accessory_found": len(accessory & set(others)),
            "accessory_false": sum(name not in accessory for name in others)}


def main_artery_summary(rows: list[dict]) -> dict:
    """How often the plan's main renal artery starts on the true one, and ends at its
    division; how many true accessory arteries are roots of their own, and how many
    roots are named accessory arteries where the phantom has none."""
    off = np.array([r["main_end_off_mm"] for r in rows if r.get("main_end_off_mm") is not None])
    return {"main_root_right": f"{sum(r.get('main_root_right') is True for r in rows)} of {len(rows)}",
            "main_end_within_5mm": f"{int(np.sum(off <= 5))} of {len(off)}",
            "main_end_off_mm_median": round(float(np.median(off)), 1) if len(off) else None,
            "accessory_found": f"{sum(r.get('accessory_found', 0) for r in rows)} of "
                               f"{sum(r.get('accessory_true', 0) for r in rows)}",
            "accessory_false": sum(r.get("accessory_false", 0) for r in rows)}


def fewest_summary(rows: list[dict]) -> dict:
    """Where the fewest clamps are named: how many kidneys, and the medians of branches
    clamped and of the kidney left without blood, deepest candidates against fewest."""
    named = [r for r in rows if r.get("fewest")]
    if not named:
        return {"fewest_named": 0}
    return {"fewest_named": len(named),
            "candidates_median": float(np.median([r["candidates"] for r in named])),
            "fewest_median": float(np.median([r["fewest"] for r in named])),
            "candidates_ischaemic_percent_median": round(float(np.median(
                [r["candidates_ischaemic_percent"] for r in named])), 2),
            "fewest_ischaemic_percent_median": round(float(np.median(
                [r["fewest_ischaemic_percent"] for r in named])), 2),
            "fewest_single_branch": sum(r["fewest"] == 1 for r in named)}


def clamping_facts(clamping: dict | None) -> dict:
    """How many branches the deepest candidates and the fewest clamps take, and the share
    of the kidney each leaves without blood (None where there is no such option); the same
    for what the plan proposes (its strategy)."""
    if not clamping:
        return {}
    fewest = clamping.get("fewest")
    names, cost = proposed_clamping(clamping)
    return {"candidates": len(clamping["candidates"]), "candidates_ischaemic_percent": clamping["ischaemic_percent"],
            "fewest": len(fewest["branches"]) if fewest else None,
            "fewest_ischaemic_percent": fewest["ischaemic_percent"] if fewest else None,
            "proposed": len(names), "proposed_ischaemic_percent": cost["ischaemic_percent"]}


def proposal_summary(rows: list[dict]) -> dict:
    """What the plans propose, over the kidneys with a clamping: how often each strategy,
    and the medians of branches clamped and of the kidney left without blood, against
    the deepest candidates of the same kidneys."""
    planned = [r for r in rows if r.get("proposed")]
    if not planned:
        return {}
    return {"strategies": {k: sum(r["strategy"] == k for r in planned) for k in ("selective", "fewest", "main")},
            "proposed_median": float(np.median([r["proposed"] for r in planned])),
            "proposed_mean": round(float(np.mean([r["proposed"] for r in planned])), 2),
            "deepest_candidates_mean": round(float(np.mean([r["candidates"] for r in planned])), 2),
            "proposed_ischaemic_percent_median": round(float(np.median(
                [r["proposed_ischaemic_percent"] for r in planned])), 2),
            "deepest_candidates_ischaemic_percent_median": round(float(np.median(
                [r["candidates_ischaemic_percent"] for r in planned])), 2)}


@contextlib.contextmanager
def recording_leaf_cells():
    """Record each kidney's terminal-branch cells while a plan runs: a list of
    ``(box, cells)``, ``box`` the slices of the study grid the side was planned in,
    ``cells`` the terminal branch of each voxel of that box (-1 outside the domain)."""
    records, boxes = [], []
    bounding_box, voronoi = renalseg.plan.bounding_box, renalseg.plan._geodesic_voronoi

    def box_of(mask: np.ndarray) -> tuple:
        boxes.append(bounding_box(mask))
        return boxes[-1]

    def cells_of(domain, seeds_zyx, seed_labels, spacing_zyx):  # noqa: ANN001, ANN202
        cells, unreached = voronoi(domain, seeds_zyx, seed_labels, spacing_zyx)
        box = tuple(slice(max(b.start - 2, 0), max(b.start - 2, 0) + n) for b, n in zip(boxes[-1], domain.shape))
        records.append((box, cells))
        return cells, unreached

    with mock.patch.object(renalseg.plan, "bounding_box", box_of), \
            mock.patch.object(renalseg.plan, "_geodesic_voronoi", cells_of):
        yield records


def leaf_oracle(case, records) -> float:  # noqa: ANN001
    """Territory agreement with each terminal-branch cell given its best true territory."""
    truth, kidney = case.territory.array, case.label.array == 2
    agree = total = 0
    for box, cells in records:
        inside = kidney[box] & (truth[box] > 0) & (cells >= 0)
        cell, true = cells[inside], truth[box][inside]
        for c in np.unique(cell):
            agree += int(np.bincount(true[cell == c]).max())
        total += int(inside.sum())
    return agree / max(total, 1)


def _segmenter(weights: str, threads: int, thin_branches: bool = False):  # noqa: ANN202 - (image) -> (labels, s)
    """A function from a phantom's image to the label map ``renalseg segment --input-is-roi``
    (with ``--thin-branches`` when asked, else ``--no-thin-branches``) writes for it with ``weights`` (KiPA22 values) and
    the seconds it took."""
    import torch

    from renalseg.pipeline import SegmentConfig, segment_study, thin_branch_segmenter
    from renalseg.segmenter import load_model

    torch.set_num_threads(threads)
    segmenter = load_model(weights, device="cpu")
    if not {"kidney", "renal_artery"} <= set(segmenter.spec.classes.values()):
        raise SystemExit(f"{weights}: the plan needs artery and kidney labels; this model labels "
                         f"{', '.join(sorted(set(segmenter.spec.classes.values()) - {'background'}))}.")
    config = SegmentConfig(input_is_roi=True, weights=segmenter.weights_path, thin_branches=thin_branches)
    artery_segmenter = thin_branch_segmenter(segmenter, device="cpu") if thin_branches else None

    def run(image: Volume) -> tuple[Volume, float]:
        started = time.perf_counter()
        result = segment_study(image.to_sitk(), config, segmenter=segmenter, artery_segmenter=artery_segmenter)
        return Volume.from_sitk(result.labels), round(time.perf_counter() - started, 1)

    return run


def written_labels(case, segment, folder: str | None, seed: int) -> tuple[Volume, float | None]:  # noqa: ANN001
    """The label map ``segment`` writes for ``case``, from ``folder`` when it is there
    (seconds ``None``: not measured again), else segmented (and kept there)."""
    from renalseg.io.image import read_image, write_image

    path = Path(folder) / f"seed_{seed}.nii.gz" if folder else None
    if path is not None and path.exists():
        return Volume.from_sitk(read_image(path)), None
    labels, seconds = segment(case.image)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(labels, path)
    return labels, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=30)
    parser.add_argument("--seed", type=int, default=20000)
    parser.add_argument("--kind", choices=("roi", "abdomen"), default="roi")
    parser.add_argument("--json", default=None, help="write per-case rows and the summary here")
    parser.add_argument("--segmental-max-share", type=float, default=PlanConfig.segmental_max_share)
    parser.add_argument("--fewest-tolerance", type=float, default=PlanConfig.fewest_tolerance,
                        help="PlanConfig.fewest_tolerance (share of the kidney)")
    parser.add_argument("--quiet", action="store_true", help="print the summary only")
    parser.add_argument("--segment", metavar="WEIGHTS", default=None,
                        help="plan on what `renalseg segment --input-is-roi` writes with these weights (roi kind)")
    parser.add_argument("--phase", default=None, help="the phantoms' contrast phase (e.g. portal-venous)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of --segment")
    parser.add_argument("--thin-branches", action="store_true",
                        help="with --segment: segment as `renalseg segment --thin-branches` does")
    parser.add_argument("--labels-dir", default=None,
                        help="with --segment: keep the written label maps here and reuse them")
    parser.add_argument("--true", default="", help="structures taken from the phantom's truth before "
                        "planning (comma-separated: artery, kidney, tumour)")
    parser.add_argument("--tumour-given", choices=("sphere", "point"), default=None,
                        help="the tumour as `renalseg plan --tumour-at` takes it (see above)")
    parser.add_argument("--leaf-oracle", action="store_true",
                        help="also the agreement with terminal-branch cells grouped right (see above)")
    args = parser.parse_args()
    if args.seed < 20000:
        parser.error("held-out phantoms use seeds ≥ 20000 (lower seeds may have been used for training)")
    if args.thin_branches and not args.segment:
        parser.error("--thin-branches needs --segment")
    if args.segment and args.kind != "roi":
        parser.error("--segment scores roi phantoms (the crop `renalseg segment` places)")
    make = synthesize_roi if args.kind == "roi" else synthesize_abdomen
    options = {"phase": args.phase} if args.phase else {}
    true = [name for name in args.true.split(",") if name]
    if unknown := sorted(set(true) - set(VALUE_OF)):
        parser.error(f"--true: unknown {', '.join(unknown)}; choose among {', '.join(VALUE_OF)}")
    segment = _segmenter(args.segment, args.threads, args.thin_branches) if args.segment else None
    if segment:
        options["great_vessels"] = True
    rows, seconds = [], []
    for seed in range(args.seed, args.seed + args.cases):
        case = make(seed, tumour=True, territories=True, **options)
        labels, segment_seconds = written_labels(case, segment, args.labels_dir, seed) if segment else (case.label, None)
        if true:
            labels = with_true(labels, case.label, true)
        if args.tumour_given:
            labels = with_given_tumour(labels, case.label, args.tumour_given)
        started = time.perf_counter()
        with recording_leaf_cells() if args.leaf_oracle else contextlib.nullcontext([]) as records:
            result = plan_labels(labels, KIPA, config=PlanConfig(segmental_max_share=args.segmental_max_share,
                                                                 fewest_tolerance=args.fewest_tolerance))
        seconds.append(time.perf_counter() - started)
        oracle = leaf_oracle(case, records) if args.leaf_oracle else None
        for row in evaluate_case(case, result):
            if oracle is not None:
                row["leaf_oracle"] = round(oracle, 4)
            row["seconds"] = round(seconds[-1], 2)
            if segment_seconds is not None:
                row["segment_seconds"] = segment_seconds
            rows.append(row)
            if not args.quiet:
                print(json.dumps(row), flush=True)
    valid = [r for r in rows if "tp" in r]
    tp, fp, fn = (sum(r[k] for r in valid) for k in ("tp", "fp", "fn"))
    precision_case = [r["tp"] / (r["tp"] + r["fp"]) for r in valid if r["tp"] + r["fp"]]
    recall_case = [r["tp"] / (r["tp"] + r["fn"]) for r in valid if r["tp"] + r["fn"]]
    summary = {
        "kind": args.kind, "labels": (f"renalseg segment{' --thin-branches' if args.thin_branches else ''} with "
                                      f"{args.segment}" if args.segment else "true")
        + (f", true {', '.join(true)}" if true else "") + (f", tumour given as a {args.tumour_given}"
                                                          if args.tumour_given else ""),
        "phase": args.phase or "arterial (as drawn)", "cases": args.cases,
        "segmental_max_share": args.segmental_max_share, "fewest_tolerance": args.fewest_tolerance,
        "seeds": [args.seed, args.seed + args.cases - 1],
        "kidneys_scored": len(valid),
        "feeding_precision_micro": round(tp / max(tp + fp, 1), 3),
        "feeding_recall_micro": round(tp / max(tp + fn, 1), 3),
        "feeding_precision_mean": round(float(np.mean(precision_case)), 3) if precision_case else None,
        "feeding_recall_mean": round(float(np.mean(recall_case)), 3) if recall_case else None,
        "territory_agreement_mean": round(float(np.nanmean([r["agreement"] for r in valid])), 3),
        "territory_agreement_min": round(float(np.nanmin([r["agreement"] for r in valid])), 3),
        **({"leaf_oracle_mean": round(float(np.mean([r["leaf_oracle"] for r in valid])), 3),
            "leaf_oracle_min": round(float(np.min([r["leaf_oracle"] for r in valid])), 3)} if args.leaf_oracle else {}),
        **fewest_summary(valid),
        **proposal_summary(valid),
        **main_artery_summary(valid),
        "seconds_per_study_mean": round(float(np.mean(seconds)), 2),
        "seconds_per_study_max": round(float(np.max(seconds)), 2),
    }
    print("\n| metric | value |\n|---|---|")
    for key, value in summary.items():
        print(f"| {key} | {value} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"summary": summary, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
