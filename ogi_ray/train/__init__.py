"""Training: typed job config, the pure PyTorch loop, the Ray worker boundary and driver."""
