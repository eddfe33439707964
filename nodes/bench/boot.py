"""Start the sampling benchmark worker inside ComfyUI (run as a script by ``spire_core.bench.sampling``).

    python nodes/bench/boot.py COMFYUI_DIR PACK_DIR DEVICE [worker arguments]

Kept here, in the ComfyUI adapter, because ``spire_core`` never imports ComfyUI. ComfyUI itself does not
load this file (``nodes/__init__.py`` imports only the node modules).
"""

import importlib.util
import sys


def main() -> None:
    root, pack, device = sys.argv[1], sys.argv[2], sys.argv[3]
    sys.path.insert(0, root)
    from comfy.cli_args import args

    args.cpu = device == "cpu"
    args.disable_api_nodes = True
    spec = importlib.util.spec_from_file_location(
        "spire_pack", pack + "/__init__.py", submodule_search_locations=[pack]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["spire_pack"] = module
    spec.loader.exec_module(module)
    from spire_pack.nodes.bench import worker

    worker.main(sys.argv[4:])


if __name__ == "__main__":
    main()
