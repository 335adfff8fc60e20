"""Developer tools: step-time and augmentation benchmarks (not needed to
train or serve a model)."""
