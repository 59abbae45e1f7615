"""The command line (`ovq`) and the runtime benchmarks. The top room: nothing imports it but
ovq/__main__.py and the console script."""
