"""The sessionizer: consumes the event log and writes events and identities to ClickHouse."""
