"""The trust plane: signals about a request turned into an explainable risk score.

Small providers each compute signals (authentication strength and age, network origin,
impossible travel); `assessor.TrustAssessor` weighs them with the active bundle's `trust.yaml`
(`policy.py`) into a score 0–100 and a level, gives Cedar `context.trust` and records each
signal with its value, points and source in the decision. The decision point calls it for every
request (decision/point.py); nothing here imports the decision point.
"""
