"""Fine-tuning schedules: parameter groups, validated recipes, per-group learning rates and freezing, the plot, and
the engine that puts a recipe to work on a network (``engine.FineTuneEngine``)."""
