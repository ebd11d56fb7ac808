"""Configuration posture: one CEL rule engine, with shipped rule packs, used by the Kubernetes
admission webhook and by `trustplane scan`, so both give the same answer for the same object."""
