"""Maintenance scripts for the repository, run from the pack's folder; never loaded by ComfyUI (the pack's
``__init__.py`` loads ``nodes/`` only) and never installed by ``pip install .`` (which installs ``spire_core``).

- ``python -m tools.build_workflows``: writes the shipped workflows (``example_workflows/``) and their API twins
  (``tests/workflows_api/``).
- ``python -m tools.thumbnails [COMFYUI_DIR]``: writes the workflows' thumbnails (same-name ``.jpg``).
"""
