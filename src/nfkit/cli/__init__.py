"""Command-line front ends: argument parsing and text formats only."""
