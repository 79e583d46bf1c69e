"""Package data: jinja2 templates for the options form and the service pages."""
