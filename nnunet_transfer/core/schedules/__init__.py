"""Fine-tuning schedules: parameter groups, validated recipes, per-group learning rates and freezing, the plot."""
