"""Training: the one Trainer loop, its stacked-seeds step strategy, data-parallel helpers, device and
precision, RNG state, metrics, TensorBoard monitor, and re-evaluation of finished runs."""
