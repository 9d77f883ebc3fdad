"""Fold an exported ONNX graph's shape arithmetic into constants.

torch.onnx traces every `x.view(b, t, heads, head_dim)` and every SDPA scale as Shape -> Gather -> Unsqueeze ->
Concat chains that ONNX Runtime cannot fold while an axis is dynamic, although most of their values are fixed
(the head count, the head width, the scale) or copy an axis of the tensor being reshaped. At the served sizes
these chains are a large share of the kernels run: GRACE's decoder step ran ~350 of them per call, ~115 of them
shape arithmetic. ONNX Runtime's symbolic shape inference knows each such value as an expression of the named
axes; here every value it knows to be an integer becomes an initializer, every Reshape whose target is, per axis,
a constant or "the same axis of its input" gets a constant target (0 copies an axis, as Reshape defines it), and
the nodes nothing reads any more are dropped. The exporters check ONNX Runtime against torch on other shapes
after this pass and keep the file as exported when a fold broke parity (exporters.onnx_export._export).
"""

from __future__ import annotations

import logging
import numbers
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

log = logging.getLogger(__name__)


def _dims(value_info) -> list:
    """An int per static axis, the axis name per named one, None where unknown."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value_info.type.tensor_type.shape.dim]


def _infer(model: onnx.ModelProto, merge_axes: bool) -> tuple[dict, dict, dict]:
    """(shapes, element types, known values) of every tensor, by ONNX Runtime's symbolic shape inference."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference  # noqa: PLC0415

    # merge_axes (auto_merge): where an op needs two named axes equal, they are merged (the decoder step's
    # memory_valid "tokens" / tokens_per_event and cross_kv's "events" are equal by contract; the inference cannot
    # know it). A merge that does not hold for other sizes makes wrong folds: the caller checks parity.
    inference = SymbolicShapeInference(int_max=2**31 - 1, auto_merge=merge_axes, guess_output_rank=False, verbose=0)
    inference._preprocess(model)  # what SymbolicShapeInference.infer_shapes runs, keeping the instance's values
    while inference.run_:  # a shape left unknown (an op the inference does not model) is simply not folded
        inference._infer_impl()
    inference._update_output_from_vi()
    graph = inference.out_mp_.graph
    infos = list(graph.value_info) + list(graph.input) + list(graph.output)
    return ({v.name: _dims(v) for v in infos}, {v.name: v.type.tensor_type.elem_type for v in infos},
            dict(inference.sympy_data_))


def _integer_value(value) -> np.ndarray | None:
    """A known shape value (an int, or a list of them) as an int64 array; None if any part is symbolic. (The
    inference's values are sympy numbers, which register as numbers.Integral when they are integers.)"""
    def is_int(x) -> bool:
        return isinstance(x, numbers.Integral) and not isinstance(x, bool)

    if isinstance(value, list) and value and all(is_int(x) for x in value):
        return np.array([int(x) for x in value], np.int64)
    if is_int(value):
        return np.array(int(value), np.int64)
    return None


def slim_graph(model: onnx.ModelProto, merge_axes: bool = False) -> dict[str, int]:
    """Folds `model` in place; returns how many values became constants, how many Reshapes got a constant
    target, and the node count before and after."""
    shapes, types, values = _infer(model, merge_axes)
    graph = model.graph
    before = len(graph.node)
    folded: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        for name in node.output:
            array = _integer_value(values.get(name))
            if array is None or name not in types or list(array.shape) != shapes.get(name):
                continue
            folded[name] = array.astype(onnx.helper.tensor_dtype_to_np_dtype(types[name]))
    graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in folded.items())
    reshaped = 0
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[1] in folded:
            continue
        source, target = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not source or not target or None in source or None in target or 0 in target:
            continue  # unknown, or a real zero-size axis (0 would read as "copy")
        axes = [d if isinstance(d, int) else 0 if i < len(source) and source[i] == d else -1
                for i, d in enumerate(target)]
        if axes.count(-1) > 1:
            continue
        name = f"{node.output[0]}__target"
        graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), name))
        node.input[1] = name
        reshaped += 1
    # Keep the nodes the outputs still need (a folded output is an initializer now).
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(o in needed and o not in folded for o in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    used = {name for node in graph.node for name in node.input} | needed
    initializers = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    onnx.checker.check_model(model)
    return {"folded_values": len(folded), "constant_reshapes": reshaped, "nodes_before": before,
            "nodes_after": len(graph.node)}


def slim_file(path: Path, merge_axes: bool = False) -> dict[str, int] | None:
    """slim_graph on an ONNX file, rewritten in place; a graph the inference cannot follow is left as exported
    (logged), since the pass only saves time."""
    model = onnx.load(str(path))
    try:
        stats = slim_graph(model, merge_axes)
    except Exception as e:  # noqa: BLE001  (private inference API: any failure means "leave the file alone")
        log.warning("%s: shape folding skipped (%s: %s)", Path(path).name, type(e).__name__, e)
        return None
    onnx.save(model, str(path))
    return stats
