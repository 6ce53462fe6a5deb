"""The workflow pages, one per step."""
