"""``python -m renalseg`` (also what ``torchrun -m renalseg`` runs)."""

from renalseg.cli.app import main

if __name__ == "__main__":
    main()
