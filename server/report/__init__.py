"""The run report and tracking: runs/<id>/report.html, runs/<id>/events/ (TensorBoard), `fedclinic runs`.

Everything here reads a run folder (summary.json, schema 2 or older, and config.yaml); nothing
here talks to Flower. Entry points: server.report.page.write_report, server.report.events.write_events,
server.report.runs_list.list_runs.
"""
