"""The pack loads in the real ComfyUI: frozen node ids, V3 schemas with tooltips, bounds and
descriptions, the model folder, and no V1 mappings."""

from __future__ import annotations

import inspect
import sys

FROZEN_NODE_IDS = {
    "SPIRE_DegradeImage",
    "SPIRE_RestorationPrompt",
    "SPIRE_ParseRestorationPrompt",
    "SPIRE_AdaptorLoader",
    "SPIRE_ApplyAdaptor",
    "SPIRE_EncodeRestorationPrompt",
    "SPIRE_RestorationGuider",
    "SPIRE_Restore",
    "SPIRE_ColorFix",
    "SPIRE_ImageMetrics",
    "SPIRE_SaveMetrics",
    "SPIRE_SuggestRestorationPrompt",
}
"""Node ids are frozen once a workflow ships; a change goes to a new ``...V2`` id."""


def spire_classes(comfy):
    return {k: v for k, v in comfy.nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("SPIRE_")}


def test_frozen_node_ids_are_registered(comfy):
    assert set(spire_classes(comfy)) == FROZEN_NODE_IDS


def test_pack_is_v3_only(comfy):
    # the module ComfyUI loaded from its custom_nodes folder (pytest may have imported the pack's folder as a
    # package of the same name too, when it is named spire_restoration as the README installs it)
    entry = comfy.base / "custom_nodes" / "spire_restoration" / "__init__.py"
    pack = [m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == str(entry)]
    assert pack, "the pack module is not in sys.modules"
    assert not hasattr(pack[0], "NODE_CLASS_MAPPINGS")
    assert callable(pack[0].comfy_entrypoint)


def test_every_input_has_a_tooltip_and_numbers_have_bounds(comfy):
    for node_id, cls in spire_classes(comfy).items():
        schema = cls.GET_SCHEMA()
        assert schema.description and len(schema.description) > 40, node_id
        assert schema.category.startswith("SPIRE/"), node_id
        assert schema.display_name.endswith("(SPIRE)"), node_id
        params = list(inspect.signature(cls.execute).parameters)
        assert params == [i.id for i in schema.inputs], node_id
        for inp in schema.inputs:
            assert inp.tooltip, f"{node_id}.{inp.id} has no tooltip"
            if inp.get_io_type() in ("INT", "FLOAT"):
                assert inp.min is not None and inp.max is not None, f"{node_id}.{inp.id} has no bounds"
                assert inp.min <= inp.default <= inp.max, f"{node_id}.{inp.id} default out of bounds"


def test_object_info_is_served_for_every_node(comfy):
    for node_id, cls in spire_classes(comfy).items():
        info = cls.GET_NODE_INFO_V1()
        assert info["name"] == node_id
        assert info["category"].startswith("SPIRE/")


def test_spire_model_folder_is_registered(comfy):
    paths = comfy.folder_paths.get_folder_paths("spire")
    assert any(p.endswith("spire") for p in paths)
