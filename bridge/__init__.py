"""mimi-bridge: a Matrix application service with connector plugins."""
