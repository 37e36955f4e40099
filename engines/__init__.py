"""What runs after the weights: engines (eager, compiled, CUDA graphs), their static KV cache and compile caches."""
