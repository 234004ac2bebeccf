"""`python -m aigc`: the `aigc` command (see :mod:`aigc.cli`)."""

from aigc.cli import main

raise SystemExit(main())
