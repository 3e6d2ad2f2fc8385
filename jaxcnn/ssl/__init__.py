"""Self-supervised pretraining: autoencoder, SimCLR, k-means."""
