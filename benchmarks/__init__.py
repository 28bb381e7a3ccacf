"""Side-by-side performance runs of Fluidity and its baselines; see README.md."""
