"""Reports: ``report.html`` for any run directory (fit, probe, rank, compare), plots as PNG files."""
from .html import write_report

__all__ = ["write_report"]
