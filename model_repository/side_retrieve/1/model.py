"""Triton python-backend entry of this step; what it computes and its I/O are in serving.steps and
serving.graph."""

from serving.steps import SideRetrieve as TritonPythonModel  # noqa: F401
