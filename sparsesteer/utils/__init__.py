"""Small shared helpers: atomic IO, user-facing errors, config dataclasses, progress bars."""
