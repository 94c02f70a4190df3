"""Work chains: the self-healing training run and the active-learning loop."""
