"""Evaluation harness: benchmark loaders, workflow-RAG baselines, metrics (issue 3)."""
