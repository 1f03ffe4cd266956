"""The report stage: one run's metrics, tables and case studies -> one self-contained interactive HTML file."""

from rag_spark.report.html import build_sections, render_report, write_report
from rag_spark.report.inputs import CaseStudy, ReportInputs

__all__ = ["CaseStudy", "ReportInputs", "build_sections", "render_report", "write_report"]
