"""What pruning did, for operators: Prometheus metrics and the opt-in retained-index trace."""
