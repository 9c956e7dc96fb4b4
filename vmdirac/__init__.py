"""vmdirac: DIRAC workload management with the VMDIRAC cloud extension, rebuilt in Python."""

__version__ = "0.1.0"
