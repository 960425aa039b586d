"""Experiments: learning-rate finder and optimizer comparisons."""
