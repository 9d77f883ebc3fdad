"""Client side of the recommendation server: typed gRPC client and CLI (`python -m clients.cli`)."""

from clients.recommend_client import (
    CLIENT_ERROR_CODE,
    DEFAULT_MODEL_NAME,
    DEFAULT_URL,
    Behavior,
    Event,
    Recommendation,
    RecommendClient,
    RecommendedItem,
    RecommendError,
    ServerLimits,
    build_inputs,
    build_inputs_from_arrays,
    parse_limits,
    parse_outputs,
    synthetic_history,
)

__all__ = [
    "CLIENT_ERROR_CODE",
    "DEFAULT_MODEL_NAME",
    "DEFAULT_URL",
    "Behavior",
    "Event",
    "Recommendation",
    "RecommendClient",
    "RecommendError",
    "RecommendedItem",
    "ServerLimits",
    "build_inputs",
    "build_inputs_from_arrays",
    "parse_limits",
    "parse_outputs",
    "synthetic_history",
]
