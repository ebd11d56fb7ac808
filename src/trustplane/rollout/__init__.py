"""The rollout plane: evidence for moving a policy from observe to enforce. People label the
would-denies of observe-mode policies (`labels.py`); the bundle's `rollout.yaml` sets per tier
what evidence a promotion needs, and `gates.py` measures it (false-positive rate with a Wilson
interval, days observed, decisions, labels, attributable share)."""
