"""The hot path's kernels, each beside its PyTorch reference: the fused Markov drafting step (Triton on CUDA) and
the routing of CPU fp32 linear layers through oneDNN. Without CUDA the references run automatically."""
