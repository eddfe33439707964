"""Evaluation: full-reference image metrics (:mod:`spire_core.eval.metrics`).

Import the submodule itself (``from spire_core.eval.metrics import ssim``); this package imports nothing.
"""
