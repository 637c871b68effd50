"""Grafana for wardstream: dashboards written as Python code, provisioning, and ``grafana push``.

The dashboards are plain dataclasses (``grafana.model``) built per board in ``grafana.boards``;
``python -m grafana.build`` renders them to the committed JSON under ``grafana/dashboards/`` and
writes the provisioning files, so the JSON Grafana loads is always the code's output.
"""
