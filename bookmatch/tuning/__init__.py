"""Hyper-parameter search for the contrastive bi-encoder (`bookmatch tune`): a search space read from YAML
(`space`), an Optuna study in SQLite that a killed search resumes (`search`), and its report (`report`)."""
