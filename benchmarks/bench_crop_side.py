"""Which kidney an ``--input-is-roi`` crop holds: from its coordinates, or from its vessels.

For each case of a phantom folder written by ``recipes/make_training_phantoms.py``
(``cases.json`` names each case's seed and options; the phantom's own side is the truth),
reads the side two ways: the side of x = 0 the crop's centre lies on
(:func:`renalseg.pipeline.roi_from_extent`, what ``renalseg segment --input-is-roi`` used
before), and where the renal vessels leave the kidney
(:func:`renalseg.mesh.side_from_vessels`) on the true labels and, with ``--segmented
DIR``, on ``renalseg segment``'s written labels (``DIR/<case>/labels.nii.gz``, where
present).

Usage::

    PYTHONPATH=. python benchmarks/bench_crop_side.py runs/phantoms/four_art [--segmented SEG/four_art] ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from renalseg.io.image import read_image, read_label_image
from renalseg.phantom.abdomen import synthesize_roi
from renalseg.mesh import side_from_vessels
from renalseg.pipeline import roi_from_extent
from renalseg.volume import Volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--segmented", action="append", type=Path, default=[],
                        help="segment's output folder for each phantom folder, in the same order")
    args = parser.parse_args()
    counts = {"centre": [0, 0], "vessels, true labels": [0, 0], "vessels, written labels": [0, 0]}
    offsets: list[float] = []
    for index, folder in enumerate(args.folders):
        written = args.segmented[index] if index < len(args.segmented) else None
        for case in json.loads((folder / "cases.json").read_text())["cases"]:
            truth = synthesize_roi(case["seed"], **case["options"]).params["side"]
            image = Volume.from_sitk(read_image(folder / "image" / f"{case['case']}.nii.gz"))
            label = Volume.from_sitk(read_label_image(folder / "label" / f"{case['case']}.nii.gz"))
            found = {"centre": roi_from_extent(image.geometry, (0.7, 0.7, 1.0)).side}
            found["vessels, true labels"], offset = side_from_vessels(label.array, label.geometry)
            if offset is not None:
                offsets.append(abs(offset))
            path = written / case["case"] / "labels.nii.gz" if written is not None else None
            if path is not None and path.is_file():
                labels = Volume.from_sitk(read_label_image(path))
                found["vessels, written labels"], offset = side_from_vessels(labels.array, labels.geometry)
                if offset is not None:
                    offsets.append(abs(offset))
            print(case["case"], truth, found)
            for how, side in found.items():
                counts[how][0] += side == truth
                counts[how][1] += 1
    for how, (right, total) in counts.items():
        if total:
            print(f"{how}: {right} of {total} right")
    if offsets:
        print(f"vessels' offset from the kidney's centre: {min(offsets):.1f}-{max(offsets):.1f} mm")


if __name__ == "__main__":
    main()
