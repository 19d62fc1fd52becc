"""The ``scanco-units`` command line: argument parsing, exit codes, info, convert, demo."""
