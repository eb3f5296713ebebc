"""Every command a user chains, as a user runs them, over one hard patient of each kind.

One whole-abdomen phantom with a tumour per hard-patient variant
(:data:`renalseg.phantom.variants.VARIANT_KINDS`: a dropped, absent, malrotated or
horseshoe kidney, a 70-100 mm tumour, a scan cut mid-kidney, a drawn contrast phase, the
patient off-centre, another field of view and slice spacing; each with a drawn contrast
phase), seeds from 33000 on (never used for training), stored in turn as LPS, RAS, LAS and
RPS, the ``phase`` one as a DICOM series. Then, each in a fresh process as typed:

    renalseg segment IN --out OUT/seg --json
    renalseg export-mesh OUT/seg/* --out OUT/mesh          (and --space ras)
    renalseg plan OUT/seg/* --out OUT/plan --json
    renalseg report OUT/seg/<study>                         (with plotly installed)
    renalseg evaluate OUT/seg --gt OUT/gt --structures all --json

and reports each command's exit code, any error it named as unexpected (a bug) or any
traceback, and per study the quality verdict, the contrast phase called, the Dice of each
structure against the phantom's truth and each kidney's plan status and strategy. It exits
1 when a command crashed or named a bug, so it can guard a release; a study refused for
its own reason (exit 1 with its ``error.json``) is reported, not counted as a crash.

Usage:
    PYTHONPATH=. python benchmarks/bench_end_to_end.py [--seed 33000] [--kinds drop,absent] [--out DIR]
        [--weights PATH] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DIRECTIONS = ("LPS", "RAS", "LAS", "RPS")
CRASH_WORDS = ("Traceback", "unexpected ")


def run(args: list[str], log: list[dict]) -> subprocess.CompletedProcess:
    """``renalseg ARGS`` in a fresh process; its exit code, time and any crash recorded in ``log``."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "renalseg", *args], capture_output=True, text=True)
    crashed = [w for w in CRASH_WORDS if w in done.stderr or w in done.stdout]
    log.append({"command": " ".join(["renalseg", *args[:1]] + [a for a in args[1:] if a.startswith("--")]),
                "exit": done.returncode, "seconds": round(time.perf_counter() - started, 1),
                "crash": bool(crashed) or done.returncode not in (0, 1),
                "stderr_tail": done.stderr.strip().splitlines()[-3:] if done.returncode else []})
    return done


def make_studies(root: Path, seed: int, kinds: list[str]) -> dict[str, dict]:
    """One phantom per kind into ``root/in`` (the truth into ``root/gt``); what was drawn."""
    import SimpleITK as sitk

    from renalseg.phantom import synthesize_abdomen
    from renalseg.phantom.variants import random_variant
    from renalseg.phantom.writer import write_dicom_series

    (root / "in").mkdir(parents=True, exist_ok=True)
    (root / "gt").mkdir(parents=True, exist_ok=True)
    drawn = {}
    for i, kind in enumerate(kinds):
        options = random_variant(seed + i, kind)
        direction = DIRECTIONS[i % len(DIRECTIONS)]
        case = synthesize_abdomen(seed + i, tumour=True, direction=direction, **options)
        if kind == "phase":
            write_dicom_series(case.image, root / "in" / kind, uid_key=f"end-to-end-{seed + i}", patient_id="ANONYMOUS")
        else:
            sitk.WriteImage(case.image.to_sitk(), str(root / "in" / f"{kind}.nii.gz"))
        sitk.WriteImage(case.label.to_sitk(), str(root / "gt" / f"{kind}.nii.gz"))
        drawn[kind] = {"seed": seed + i, "direction": direction, "format": "dicom" if kind == "phase" else "nifti",
                       "options": {k: str(v) for k, v in options.items()}}
    return drawn


def main() -> None:
    from renalseg.phantom.variants import VARIANT_KINDS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=33000)
    parser.add_argument("--kinds", default=",".join(VARIANT_KINDS), help="comma-separated variant kinds")
    parser.add_argument("--out", default=None, help="keep the studies and every output here (default: a temporary "
                        "folder, removed)")
    parser.add_argument("--weights", default=None, help="segment with these weights (default: the shipped ones)")
    parser.add_argument("--json", default=None, help="write the commands, studies and summary here")
    args = parser.parse_args()
    if args.seed < 33000:
        parser.error("held-out phantoms here use seeds ≥ 33000")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if unknown := sorted(set(kinds) - set(VARIANT_KINDS)):
        parser.error(f"--kinds: unknown {', '.join(unknown)}; choose among {', '.join(VARIANT_KINDS)}")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.out or scratch)
        drawn = make_studies(root, args.seed, kinds)
        log: list[dict] = []
        weights = ["--weights", args.weights] if args.weights else []
        segment = run(["segment", str(root / "in"), "--out", str(root / "seg"), "--json", "--quiet", *weights], log)
        rows = {r["study"]: r for r in json.loads(segment.stdout or "{}").get("studies", [])}
        written = sorted(str(root / "seg" / s) for s, r in rows.items() if r.get("status") == "ok")
        if written:
            run(["export-mesh", *written, "--out", str(root / "mesh"), "--quiet"], log)
            run(["export-mesh", *written, "--out", str(root / "mesh_ras"), "--space", "ras", "--quiet"], log)
            plans = run(["plan", *written, "--out", str(root / "plan"), "--json", "--quiet"], log)
            if importlib.util.find_spec("plotly") is not None:
                for folder in written:
                    run(["report", folder, "--quiet"], log)
            scores = run(["evaluate", *written, "--gt", str(root / "gt"), "--structures", "all", "--json"], log)
        studies = {}
        for kind in kinds:
            row = rows.get(kind, {"status": "missing"})
            report_path = root / "seg" / kind / "report.json"
            quality = json.loads(report_path.read_text())["quality"] if report_path.is_file() else {}
            studies[kind] = {**drawn[kind], "status": row.get("status"), "verdict": quality.get("verdict"),
                             "phase_called": quality.get("phase"), "dice": {}, "plan": []}
        if written:
            for case in json.loads(scores.stdout or "{}").get("cases", []):
                studies[case["case"]]["dice"][case["structure"]] = (
                    None if case["dice"] is None else round(case["dice"], 3))
            for entry in json.loads(plans.stdout or "[]"):
                if entry.get("study") in studies and "side" in entry:
                    strategy = f" ({entry['strategy']})" if entry.get("strategy") else ""
                    studies[entry["study"]]["plan"].append(f"{entry['side']}: {entry['status']}{strategy}")
        crashed = [c for c in log if c["crash"]]
        print("\n| command | exit | s | crash |\n|---|---|---|---|")
        for c in log:
            print(f"| `{c['command']}` | {c['exit']} | {c['seconds']} | {'**yes**' if c['crash'] else 'no'} |")
        print("\n| study | drawn phase | stored | status | verdict (phase called) | Dice artery / vein / kidney / "
              "tumour | plan |\n|---|---|---|---|---|---|---|")
        for kind, s in studies.items():
            dice = " / ".join("–" if s["dice"].get(k) is None else f"{s['dice'][k]:.3f}"
                              for k in ("artery", "vein", "kidney", "tumour"))
            print(f"| {kind} ({s['seed']}) | {s['options'].get('phase')} | {s['direction']} {s['format']} | "
                  f"{s['status']} | {s['verdict']} ({s['phase_called']}) | {dice} | {'; '.join(s['plan'])} |")
        print(f"\ncommands that crashed or named a bug: {len(crashed)} of {len(log)}")
        if args.json:
            Path(args.json).write_text(json.dumps({"commands": log, "studies": studies}, indent=1))
    sys.exit(1 if crashed else 0)


if __name__ == "__main__":
    main()
