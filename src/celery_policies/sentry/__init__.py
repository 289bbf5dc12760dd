"""sentry."""
