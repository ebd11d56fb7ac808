"""Identity plane: who is asking, proven cryptographically (JWT verification so far)."""
