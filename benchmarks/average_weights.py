"""Average the parameters of several fine-tuned copies of one model (a "model soup").

    python benchmarks/average_weights.py OUT.safetensors A.safetensors B.safetensors ...

``renalseg.weights.average_models`` does the work (same network, hyper-parameters and
classes checked; the card records the inputs). The held-out metrics are left for
``benchmarks/evaluate_shipped.py --publish``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from renalseg.weights import average_models, save_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("weights", type=Path, nargs="+")
    args = parser.parse_args()
    network, card = average_models(args.weights)
    save_model(network, card, args.out)
    print(f"wrote {args.out}: the mean of {len(args.weights)} models")


if __name__ == "__main__":
    main()
