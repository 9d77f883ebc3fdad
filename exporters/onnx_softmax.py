"""Keep ONNX Runtime's CPU Softmax on its fast path: floor every Softmax input at its row maximum minus 80.

Masked attention feeds Softmax scores of -1e30 (or -inf) where a key is not visible, and ONNX Runtime's CPU
exponential runs several times slower on inputs whose exponential underflows (x - max below about -87): a
[4, 4, 64, 128] Softmax with 99% of its entries masked takes ~5-8x the time of the same Softmax unmasked
(measured on this repository's machines, onnxruntime 1.32, one thread; denormals-as-zero does not change it). The
256-event build's JSA window branch is such a Softmax.

Every Softmax(x, axis) becomes Softmax(Max(x, ReduceMax(x, axis) - 80), axis). An entry at least 80 below its
row's maximum had a weight below e^-80 / Z (~1.8e-35 of the row's mass) and now has exactly that: the outputs
move by less than 1e-34 per entry, nothing a float32 result can show, while no exponential underflows. A row
with no finite maximum (all -inf, or a +inf) gives what it gave before. The exporters check ONNX Runtime against
torch after this pass as after shape folding (exporters.onnx_export._export): a graph that takes the log of a
Softmax, where the floor would show, fails that check and is kept as it was.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger(__name__)

FLOOR = 80.0  # e^-80 ~ 1.8e-35: far below float32's resolution of a probability, well above the underflow


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def floor_softmax(model: onnx.ModelProto, floor: float = FLOOR) -> int:
    """Rewrites the model's top-level Softmax nodes in place; returns how many."""
    graph = model.graph
    opset = _default_opset(model)
    floor_name = "softmax_floor"
    nodes, count = [], 0
    for node in graph.node:
        if node.op_type == "Softmax" and node.domain in ("", "ai.onnx"):
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
            if opset < 13 and axis != -1:  # before opset 13 Softmax flattens from `axis` on: not a row max
                nodes.append(node)
                continue
            x = node.input[0]
            prefix = f"{node.name or 'Softmax'}/floor{count}"
            if opset >= 18:  # axes became an input
                axes = numpy_helper.from_array(np.array([axis], np.int64), f"{prefix}/axes")
                graph.initializer.append(axes)
                nodes.append(helper.make_node("ReduceMax", [x, axes.name], [f"{prefix}/max"], keepdims=1))
            else:
                nodes.append(helper.make_node("ReduceMax", [x], [f"{prefix}/max"], axes=[axis], keepdims=1))
            nodes.append(helper.make_node("Sub", [f"{prefix}/max", floor_name], [f"{prefix}/low"]))
            nodes.append(helper.make_node("Max", [x, f"{prefix}/low"], [f"{prefix}/x"]))
            node.input[0] = f"{prefix}/x"
            count += 1
        nodes.append(node)
    if count:
        graph.initializer.append(numpy_helper.from_array(np.array(floor, np.float32), floor_name))
        del graph.node[:]
        graph.node.extend(nodes)
    return count


def floor_softmax_file(path: Path, floor: float = FLOOR) -> int:
    """floor_softmax on an ONNX file, rewritten in place when it has any Softmax; returns how many."""
    model = onnx.load(str(path))
    count = floor_softmax(model, floor)
    if count:
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    return count
