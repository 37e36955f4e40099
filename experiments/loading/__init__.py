"""Checkpoint-loading studies: loaders × cache states × trials, model ladders, the ablation, calibration, reports."""
