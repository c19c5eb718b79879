"""The worker's web page (``/ui``): queue, jobs, progress, results and health at a glance, for whoever runs the
worker. Server-rendered (Jinja2 templates and a small script, both shipped in this package): no build step, no
CDN, nothing fetched from the internet. See docs/API.md "Web page"."""

from .routes import mount_web

__all__ = ["mount_web"]
