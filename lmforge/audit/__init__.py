"""Audits of trained models: memorization (canary exposure)."""
