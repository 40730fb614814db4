"""Data layer: dataset files to uint8 tensors, the seeded labeled/unlabeled/validation split, device-side
batching and augmentation, and the DataSpec a method is built from."""
