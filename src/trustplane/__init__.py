"""trustplane: a Zero Trust control plane."""

__version__ = "0.1.0"
