"""The features stage's topic: its params section and its output (see `stages.features`)."""
