"""Everything the hub does on Matrix: the client, encryption housekeeping, rooms."""
