"""The sampling benchmark's ComfyUI side (``python -m spire_core.bench sampling`` starts ``boot.py`` in a child
process, which runs ``worker.py`` inside ComfyUI). ComfyUI never loads this package: ``nodes/__init__.py``
imports the node modules only."""
