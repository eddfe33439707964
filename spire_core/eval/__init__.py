"""Evaluation: full-reference image metrics (:mod:`spire_core.eval.metrics`), the fixed degraded benchmark and
restoring it (:mod:`spire_core.eval.benchmark_set`), scoring and reports (:mod:`spire_core.eval.report`), and the
command line ``python -m spire_core.eval build|restore|score`` (docs/evaluation.md).

Import the submodule itself (``from spire_core.eval.metrics import ssim``); this package imports nothing.
"""
