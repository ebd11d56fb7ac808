#!/usr/bin/env python3
"""Screenshots of every page under /ui into docs/ui/, as docs/ui.md shows them.

    PYTHONPATH=src .venv/bin/python scripts/ui-screenshots.py [--out docs/ui]

Starts what the browser tests start (tests/web): the loopback OIDC issuer, a real `trustplane
serve` of examples/shop on SQLite in a temporary directory with the identity plane on, and
Debian's chromium through chromium-driver. It then makes some traffic (allowed and denied
decisions, a pending JIT request, an open break-glass session), signs in as carol (security)
and saves one PNG per page.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "src")]

from selenium.webdriver.common.by import By  # noqa: E402
from tests.conftest import SHOP  # noqa: E402
from tests.issuer import AUDIENCE, ISSUER, Jwks, rsa_key, user_token  # noqa: E402
from tests.support import authzen, running_server  # noqa: E402
from tests.web.browser import binaries, chromium, wait  # noqa: E402

from trustplane.identity.kek import new_kek  # noqa: E402

CLIENT = "trustplane-ui"
CTX = {"mfa": True, "auth_age_seconds": 60, "risk_score": 10}
TRAFFIC = [
    (("User", "alice"), "ops:read-logs", ("Service", "checkout")),
    (("User", "bob"), "ops:read-logs", ("Service", "checkout")),
    (("User", "dave"), "ops:read-logs", ("Service", "payments")),
    (("User", "erin"), "ops:restart", ("Service", "checkout")),
    (("User", "carol"), "ops:read-logs", ("Service", "checkout")),
]
PAGES = ["", "oncall", "debug", "policy", "rollout", "access", "identity", "scorecard"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "ui")
    args = parser.parse_args()
    found = binaries()
    if found is None:
        print(
            "chromium and chromium-driver are needed (scripts/bootstrap.sh --test)", file=sys.stderr
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    key = rsa_key("idp-1")
    issuer = Jwks()
    issuer.keys = [key.jwk()]
    issuer.signer = key
    issuer.sign_in_as = "carol"
    issuers = [{"issuer": ISSUER, "jwks_uri": issuer.uri, "audiences": [AUDIENCE, CLIENT]}]
    with tempfile.TemporaryDirectory(prefix="tp-screens-") as tmp:
        state = Path(tmp) / "state"
        state.mkdir()
        kek = Path(tmp) / "kek"
        kek.write_text(new_kek())
        kek.chmod(0o600)
        ui = issuer.ui_settings(CLIENT)
        with running_server(
            state,
            f"sqlite:///{state / 'trustplane.db'}",
            SHOP,
            policy__watch="false",
            pep__issuers=issuers,
            admin__issuers=issuers,
            trust=json.dumps({"trusted_peps": ["anonymous"]}),
            identity__trust_domain="shop.example",
            identity__kek_file=kek,
            ui__authorization_endpoint=ui["authorization_endpoint"],
            ui__token_endpoint=ui["token_endpoint"],
            ui__client_id=CLIENT,
        ) as server:
            denied = ""
            for _ in range(6):
                for principal, action, resource in TRAFFIC:
                    answer = server.client.post(
                        "/access/v1/evaluation", json=authzen(principal, action, resource, CTX)
                    ).json()
                    if not answer["decision"] and not denied:
                        denied = answer["context"]["decision_id"]

            for cents in (90_000, 120_000, 75_000):  # would-denies of forbid-large-refunds
                refund = {**CTX, "amount_cents": cents}
                server.client.post(
                    "/access/v1/evaluation",
                    json=authzen(
                        ("User", "erin"), "payments:refund", ("Api", "payments.refund"), refund
                    ),
                )

            def person(name: str) -> dict[str, str]:
                return {"authorization": f"Bearer {user_token(key, name)}"}

            server.client.post(
                "/v1/access/requests",
                json={
                    "role": 'Role::"sre"',
                    "duration": "2h",
                    "reason": "INC-42 checkout latency",
                    "ticket": "INC-42",
                },
                headers=person("bob"),
            )
            server.client.post(
                "/v1/break-glass",
                json={"profile": "payments-db", "reason": "INC-43 payments db down"},
                headers=person("alice"),
            )
            time.sleep(1.5)  # the ledger's batch commits what was asked
            with chromium(*found) as driver:
                driver.get(server.url + "/ui")
                wait(driver).until(lambda d: d.find_elements(By.ID, "caller"))
                for page in PAGES:
                    path = f"/ui/{page}" if page else "/ui"
                    if page == "debug":
                        path += f"?id={denied}"
                    driver.set_window_size(1280, 900)
                    driver.get(server.url + path)
                    if page == "":
                        wait(driver).until(
                            lambda d: d.find_elements(By.CSS_SELECTOR, "#trend canvas")
                        )
                    if page == "oncall":
                        wait(driver).until(
                            lambda d: d.find_element(By.ID, "stream-state").text == "live"
                        )
                        server.client.post(
                            "/access/v1/evaluation",
                            json=authzen(
                                ("User", "mallory"), "ops:restart", ("Service", "payments"), CTX
                            ),
                        )
                        wait(driver).until(
                            lambda d: d.find_elements(By.CSS_SELECTOR, "#denials tr.fresh")
                        )
                    if page in ("debug", "access"):
                        wait(driver).until(
                            lambda d: "loading" not in d.find_element(By.TAG_NAME, "main").text
                        )
                    height = driver.execute_script("return document.body.scrollHeight")
                    driver.set_window_size(1280, min(max(900, int(height) + 40), 4000))
                    target = args.out / f"{page or 'executive'}.png"
                    driver.save_screenshot(str(target))
                    print(target.relative_to(REPO) if target.is_relative_to(REPO) else target)
    issuer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
