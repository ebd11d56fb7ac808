"""Access governance: just-in-time access requests and grants, break-glass with mandatory
review, the exception register, and their notifications (see docs/governance.md)."""
