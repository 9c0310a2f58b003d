"""Many combinations: a sweep's parent run and progress, the grid sweeper and the Optuna search."""
