"""Training, evaluation and checkpointing as plain functions that receive objects, not config."""
