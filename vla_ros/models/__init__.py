"""Builders for the local demo checkpoints (random-weight, seeded); no model hub is needed."""
