"""``python -m spire_core.experiments.miniature``: see the package docstring."""

from .run import main

raise SystemExit(main())
