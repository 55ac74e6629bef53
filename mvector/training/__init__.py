"""Training: reads corpora and configs, writes model directories. Never imports ``mvector.inference``."""
