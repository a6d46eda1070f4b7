"""Models: loading (hub id, local dir, the embedded tiny OPT), wrappers, losses, generation, PEFT."""
