"""On-disk caches of latents and text embeddings (safetensors, written atomically)."""
