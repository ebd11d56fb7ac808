"""The pages people look at, under /ui: executive, on-call, debug, policy, rollout, access,
identity and scorecard (`app.py`), signed in with OIDC (`oidc.py`) into a sealed session
cookie (`session.py`); templates and vendored scripts are package data."""
