"""Compression steps, each a transform Candidate -> Candidate: distill -> prune -> quantize."""
