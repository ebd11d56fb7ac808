"""The trust plane as the server builds it: the providers configured, in one assessor."""

from __future__ import annotations

import time
from collections.abc import Callable

from trustplane.config import TrustSettings
from trustplane.trust.assessor import TrustAssessor
from trustplane.trust.authentication import AuthenticationSignals
from trustplane.trust.signals import Provider


def assessor_from_settings(
    settings: TrustSettings, clock: Callable[[], float] = time.time
) -> TrustAssessor:
    providers: list[Provider] = [AuthenticationSignals()]
    return TrustAssessor(providers, trusted_peps=settings.trusted_peps, clock=clock)
