"""Where SPIRE files live inside ComfyUI."""

from __future__ import annotations

import os

import folder_paths

MODEL_FOLDER = "spire"
"""ComfyUI model folder for SPIRE adaptors: ``ComfyUI/models/spire`` (or an ``extra_model_paths.yaml`` entry).

Registered without an extension filter so that a wrong file dropped there (a .ckpt, a base
checkpoint) is listed and gets a clear error from the loader instead of silently not appearing."""


def register_model_folder() -> None:
    """Register ``models/spire`` with ComfyUI (idempotent; no directory is created)."""
    folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))
