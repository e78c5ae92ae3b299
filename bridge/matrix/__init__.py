"""The Matrix side of the core: talking to the homeserver as the bot and the ghosts."""
