"""Editing an ONNX graph in place: the one step every rewrite of kiln's ends with."""

from __future__ import annotations

from typing import Any


def replace_nodes(graph: Any, nodes: list[Any]) -> None:
    """Make `nodes` the graph's nodes, in that order, and drop the initializers none of them reads
    (the weights a rewrite replaced)."""
    used = {name for node in nodes for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept)
