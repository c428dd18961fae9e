"""The engine's version, recorded in every report and on every Slicer output node."""

__version__ = "0.1.0"
