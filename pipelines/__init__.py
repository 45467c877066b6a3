"""Pipeline presets as TOML (installed as the data package matcher._pipelines)."""
