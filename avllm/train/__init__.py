"""Training: supervised fine-tuning (align, instruct) and DPO, on transformers' Trainer."""
