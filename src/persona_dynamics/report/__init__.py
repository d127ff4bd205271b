"""The report stage: a run's analysis files as one offline HTML page, PNGs, and notebook helpers."""

from persona_dynamics.report.html import run_report, write_report

__all__ = ["run_report", "write_report"]
