"""Training: the train block (spec.py), optimizers, schedules and the step graph (step.py)."""
