"""Output storage: the all-or-nothing output transaction, partial-file sweeping, parallel gzip."""
