"""Retrieval attention and its relatives: pure-torch references here; the Triton kernels (issue 7) sit beside them."""
