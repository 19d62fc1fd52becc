"""The data model and the one set of rules: header, quantities, units, thresholds. Imports nothing above it."""
