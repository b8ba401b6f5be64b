"""medtune: LoRA fine-tuning of small chat models for medical reasoning, shipped as verified GGUF."""

__version__ = "0.1.0"
