"""spire_core: the pure SPIRE library (degradation synthesis, restoration prompts, adaptor, training,
evaluation, benchmarks).

It depends on torch, numpy, Pillow, safetensors, diffusers and transformers, and never imports
ComfyUI. Subpackages are imported on demand (``import spire_core.degradation``) so that importing
``spire_core`` itself is cheap.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
