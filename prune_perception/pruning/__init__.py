"""Pruning: importance criteria and structured (channel) pruning through torch-pruning's dependency graph."""
