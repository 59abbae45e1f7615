"""The Textual terminal UI (`ovq chat`). Talks only to agent's public API."""
