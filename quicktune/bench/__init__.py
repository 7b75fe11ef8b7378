"""The benchmark: replay learning-curve tables in simulated time and judge optimizers by
normalized regret over time (simulator, regret, runner, summary, synthetic tables, peers)."""
