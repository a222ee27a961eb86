"""Code every Touchpoint service shares: the event contract, settings, schema, event log.

Services import from here and never from one another.
"""
