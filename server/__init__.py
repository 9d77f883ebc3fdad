"""Serving side: launching tritonserver on the model repository."""
