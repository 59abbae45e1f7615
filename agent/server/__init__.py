"""The server room: `ovq serve`, an OpenAI-compatible HTTP API in which every conversation (the
request's `user`) is a persistent, bounded-memory session. `app.py` builds the ASGI app, `protocol.py`
reads and writes OpenAI's wire format, `sessions.py` decides what each request feeds and orders the
work, `bench.py` measures what the HTTP layer adds. Imports runtime/, eval/, model/; only cli/
imports it."""
