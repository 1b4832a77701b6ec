"""The oversight body's coordinator: runs audit plans against nodes and combines their answers."""
