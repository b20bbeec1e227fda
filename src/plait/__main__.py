"""``python -m plait``: the plait command line (see plait.cli)."""

from plait.cli import main

raise SystemExit(main())
