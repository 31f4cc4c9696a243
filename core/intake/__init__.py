"""Intake: find files in the drop folder, read them as records (salvaging damage), and stream them to the server."""
