"""The model room: layers, the hybrid model, its tokenizer and checkpoints. Imports memory/, never the
rooms above it (runtime, eval, train, cli)."""
