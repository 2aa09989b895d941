"""CM-CGNS pretraining engines: trainer, evaluator, two-stage schedule, checkpoints, distributed helpers."""
