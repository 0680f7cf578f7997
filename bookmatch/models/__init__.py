"""Models: offline backbone resolution, the bi-encoder and the cross-encoder."""
