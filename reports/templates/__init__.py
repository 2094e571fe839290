"""The report templates (Jinja2), shipped inside the wheel as effbench.report_templates."""
