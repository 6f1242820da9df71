"""Model deployments: the BLIP captioner and the CLIP embedder."""
