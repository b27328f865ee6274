"""LLaVA-format data: templates + exact masking, datasets, images, batching."""
