"""Parsers of the plugin's CalcJobs (one module per CalcJob)."""
