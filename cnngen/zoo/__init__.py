"""Classic architectures as specs."""
