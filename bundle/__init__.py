"""Python code of the CM-CGNS MONAI bundle, imported from the configs as ``bundle.<module>.<Name>``."""

__version__ = "0.1.0"
