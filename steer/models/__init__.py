"""Policies: loading any causal LM by hub id, local folder or GGUF, and building the embedded tiny policy."""
