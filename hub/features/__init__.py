"""Features: room commands and the program, built on the core and reaching adapters via ports."""
