"""Training: losses (`losses`), cross-process gathering (`distributed`), GradCache (`gradcache`), the trainer."""
