"""Losses of the CM-CGNS bundle: global contrastive, local image (SimSiam), the cluster-guided report loss with its
k-means state (cluster_state.py), reconstruction, and per-report loop references used only by tests and benchmarks."""
