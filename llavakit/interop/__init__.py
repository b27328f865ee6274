"""Interoperability: export to transformers' LlavaForConditionalGeneration."""
