"""LoRA fine-tuning of Higgs Audio v2."""
