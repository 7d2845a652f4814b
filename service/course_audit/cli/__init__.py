"""The `course-audit` command line."""
