"""The runtime room: Runtime and Session (streaming chat, feed, save/fork/rollback, probes) and the
glue between model state and snapshots. Imports model/, eval/, tasks/, snapshots/."""
