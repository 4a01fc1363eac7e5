"""Training: the leaky model (SFT), ORPO + LoRA unlearning, adapter merge, task-vector negation."""
