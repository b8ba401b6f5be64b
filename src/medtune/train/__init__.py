"""LoRA supervised fine-tuning: precision, packed batches, varlen attention, logging, the train stage."""
