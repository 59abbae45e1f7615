"""The runtime around the OVQ op, in rooms by role (imports point down this list, never up):

cli/      the `ovq` command line and the runtime benchmarks (top)
server/   `ovq serve`: an OpenAI-compatible HTTP API over persistent sessions (only cli/ imports it)
runtime/  Runtime, Session, snapshot glue
eval/     recall evaluation, side-by-side comparison, probe suites
train/    the trainer and its config
tasks/    generated data: recall tasks, memory dialogues, filler (used by train, eval and runtime)
model/    layers, the hybrid model, tokenizer, checkpoints, generation (bottom)
shipped/  the models shipped with the package, each with its card
"""
