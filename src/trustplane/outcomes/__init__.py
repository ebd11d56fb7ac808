"""Outcomes: what the policies, identities, grants and recorded decisions prove about the
program, such as the monthly scorecard."""
