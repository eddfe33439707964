"""Experiments that measure the recipe rather than ship it: the miniature control check (``miniature``, run with
``python -m spire_core.experiments.miniature``) and its toy codec (``minicodec``). They use the library
(degradation, models, training, evaluation) and nothing in the library uses them."""
