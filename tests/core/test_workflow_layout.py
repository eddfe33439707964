"""The shipped workflows are exactly what their builder writes, laid out so that no node covers another
(title bars included) and saved with a view that shows the whole graph (the browser test checks the same
with the sizes the real frontend gives the nodes)."""

from __future__ import annotations

import json

import pytest
from spire_test_support.workflows import API_DIR, WORKFLOW_DIR

from tools.build_workflows import GAP, GRAPHS, TITLE_HEIGHT, VIEW, boxes, settle


@pytest.mark.parametrize("make", GRAPHS, ids=lambda make: make.__name__)
def test_shipped_files_are_the_builders_output(make):
    graph = make()
    assert json.loads((WORKFLOW_DIR / f"{graph.name}.json").read_text(encoding="utf-8")) == graph.ui()
    assert json.loads((API_DIR / f"{graph.name}.json").read_text(encoding="utf-8")) == graph.api()


@pytest.mark.parametrize("make", GRAPHS, ids=lambda make: make.__name__)
def test_no_node_covers_another_and_the_view_shows_them_all(make):
    graph = make()
    ui = graph.ui()
    placed = {node["id"]: tuple(node["pos"]) for node in ui["nodes"]}
    assert placed == settle(graph.nodes)
    box = boxes(graph.nodes, placed)
    for a in box:
        for b in box:
            if a < b:
                apart_x = box[a][2] <= box[b][0] or box[b][2] <= box[a][0]
                apart_y = box[a][3] <= box[b][1] or box[b][3] <= box[a][1]
                assert apart_x or apart_y, (graph.name, a, b, box[a], box[b])
    scale, (dx, dy) = ui["extra"]["ds"]["scale"], ui["extra"]["ds"]["offset"]
    assert 0.5 <= scale <= 1.0  # readable, not only visible
    for left, top, right, bottom in box.values():
        assert 0 <= (left + dx) * scale and (right + dx) * scale <= VIEW[0]
        assert 0 <= (top + dy) * scale and (bottom + dy) * scale <= VIEW[1]


def test_stacking_pushes_a_covering_node_below_the_one_it_covered():
    from tools.build_workflows import Node

    nodes = [Node(1, "A", (40, 80), (320, 100)), Node(2, "B", (40, 170), (320, 80)), Node(3, "C", (400, 80))]
    placed = settle(nodes)
    assert placed == {1: (40, 80), 2: (40, 80 + 100 + GAP + TITLE_HEIGHT), 3: (400, 80)}
