"""Kernels: one public entry point per op, each with backend selection and one torch reference.

  kernels.attention.block_sparse_attention   block-sparse attention over a kernels.layout.BlockLayout
                                             (backends "auto" | "dense" | "gather" | "triton")
  kernels.clip_embed.clip_head               L2-normalised CLIP projection head ("auto" | "triton" | "torch")
  kernels.clip_embed.similarity_topk         top-k inner products against a catalog ("auto" | "triton" | "torch")

The torch references (the "dense" / "torch" backends and the tests' oracles) are in kernels/_torch_refs.py;
kernels/block_sparse_torch.py (gather) and kernels/jsa_attention.py, kernels/clip_embed.py (Triton kernels)
hold the backend implementations. kernels.bench benchmarks them; kernels.machine describes the machine.
Nothing is imported here, so `import kernels.machine` stays light.
"""
