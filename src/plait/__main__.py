"""``python -m plait``: the plait command line (see plait.cli)."""

from plait.cli import main

# Guarded: worker processes started with spawn import the main module again.
if __name__ == "__main__":
    raise SystemExit(main())
