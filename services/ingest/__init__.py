"""The collector: accepts tracker batches and makes them durable in the event log."""
