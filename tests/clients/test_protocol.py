"""The clients speak the served protocol: the tensor names, dtypes and model names they use are the serving
graph's. (clients/ imports nothing of the server on purpose, so an ad service can ship it alone; this test
is what keeps its copy of the names honest.)"""

from __future__ import annotations

import numpy as np

from clients import recommend_client as rc
from clients.ads_client import CLIP_EMBED_MODEL, SCORE_ADS_MODEL, build_clip_embed_inputs, build_score_ads_inputs
from serving import graph

# Triton's wire name of each graph dtype.
WIRE = {"INT32": "INT32", "INT64": "INT64", "FP32": "FP32", "UINT8": "UINT8", "STRING": "BYTES"}


def _signature(inputs) -> dict[str, str]:
    return {i.name(): i.datatype() for i in inputs}


def _expected(tensors) -> dict[str, str]:
    return {t.name: WIRE[t.dtype] for t in tensors}


def test_recommend_client_uses_the_graph_names():
    assert rc.DEFAULT_MODEL_NAME == graph.RECOMMEND.name
    inputs = rc.build_inputs_from_arrays([1, 2], [1, 2], [10, 20], 5, [3], [0])
    assert _signature(inputs) == _expected(graph.RECOMMEND.inputs)
    outputs = (rc.OUTPUT_TOP_ITEM_IDS, rc.OUTPUT_PCTR, rc.OUTPUT_RETRIEVAL_SOURCE)
    assert outputs == tuple(t.name for t in graph.RECOMMEND.outputs)


def test_ads_clients_use_the_graph_names():
    assert (SCORE_ADS_MODEL, CLIP_EMBED_MODEL) == (graph.SCORE_ADS.name, graph.CLIP_EMBED.name)
    inputs = build_score_ads_inputs(item_ids=[1], behaviors=[1], timestamps=[10], campaign_ids=[0, 1])
    assert _signature(inputs) == _expected(graph.SCORE_ADS.inputs)
    both = build_clip_embed_inputs(images=np.zeros((2, 28, 28), np.uint8), texts=["a", "b"])
    assert _signature(both) == _expected(graph.CLIP_EMBED.inputs)
