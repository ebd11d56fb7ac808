"""Outcomes: what the policies, identities, grants and recorded decisions prove about the
program: the monthly scorecard, who can do what (AuthZEN search) and how far a compromise
reaches (simulation)."""
