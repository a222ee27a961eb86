"""The query API: journeys (and, later, funnels, abandonment, correlations)."""
