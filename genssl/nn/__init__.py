"""Networks only (no losses of methods, no training): classifiers, VAE and GAN bodies, EMA, probes on
frozen features, and checked weight loading."""
