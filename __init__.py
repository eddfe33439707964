"""SPIRE for ComfyUI.

Inside ComfyUI this package exports ``comfy_entrypoint`` (V3 node registration). Imported anywhere
else (tests, scripts, a plain Python session) it exports nothing and has no side effects; the pure
library lives in ``spire_core``.
"""

try:
    import comfy_api.latest  # noqa: F401  (present only inside a ComfyUI process)
except ImportError:
    __all__: list[str] = []
else:
    from .nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint"]
