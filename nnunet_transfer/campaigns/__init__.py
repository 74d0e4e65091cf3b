"""Multi-dataset fine-tuning campaigns: one pretrained model, many datasets, folds and arms, resumable, on this
machine (one or several GPUs) or on a SLURM cluster through submitit."""

__all__: list[str] = []
