"""The Dagster layer: assets, checks, jobs and resources that wire the core into Dagster."""
