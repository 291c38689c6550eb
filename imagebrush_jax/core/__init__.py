"""ImageBrush itself: the grid geometry, the paper's model, and its glue to a loss and a sampler."""
