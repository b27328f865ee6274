"""llavakit — visual instruction tuning (LLaVA) that runs offline on a CPU and scales out."""

__version__ = "0.1.0"
