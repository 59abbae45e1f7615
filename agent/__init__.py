"""The hybrid SWA + OVQ model and the runtime around it: sessions, CLI, training, evaluation."""

__version__ = "0.1.0"
