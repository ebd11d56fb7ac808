"""Outcomes: who can do what (AuthZEN search) and how far a compromise reaches (simulation)."""
