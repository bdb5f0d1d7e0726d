"""The `kiln` command: thin subcommands over `compile`, `server` and `benchmarks`."""
