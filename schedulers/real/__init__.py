"""Real serverless runs: a wall-clock controller, CPU/GPU slots, and model instances in fresh processes."""
