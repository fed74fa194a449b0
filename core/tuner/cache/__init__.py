"""On-disk caches of latents and text embeddings (safetensors, written atomically); `tuner.data.encode` fills them."""
