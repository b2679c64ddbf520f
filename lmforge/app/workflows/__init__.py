"""Workflows: the pipelines that orchestrate several library stages for a user (prune and fine-tune, quantize a
directory, merge LoRA adapters, synthesize data, the run report). Commands call them; the library never does."""
