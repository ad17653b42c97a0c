"""Job, space and plan configuration: typed dataclasses and their YAML loader."""
