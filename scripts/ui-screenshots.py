#!/usr/bin/env python3
"""Screenshots of every page under /ui into docs/ui/, as docs/ui.md shows them.

    PYTHONPATH=src .venv/bin/python scripts/ui-screenshots.py [--out docs/ui]

Starts what the browser tests start (tests/web): the loopback OIDC issuer, a real `trustplane
serve` of examples/shop on SQLite in a temporary directory with the identity plane on, and
Debian's chromium through chromium-driver. The bundle is a copy of the example with
forbid-large-refunds as a 50 % canary (and a second support agent in its enforced cohort). It
then makes some traffic (allowed and denied decisions, refunds in both cohorts, tokens from an
issuer that is up and one whose JWKS is unreachable, a pending JIT request, an open break-glass
session, a saved compromise simulation, an edit of the bundle nobody activated), signs in as
carol (security) and saves one PNG per page.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "src")]

from selenium.webdriver.common.by import By  # noqa: E402
from tests.conftest import SHOP  # noqa: E402
from tests.issuer import AUDIENCE, ISSUER, Jwks, rsa_key, user_token  # noqa: E402
from tests.support import authzen, run_cli, running_server  # noqa: E402
from tests.web.browser import binaries, chromium, wait  # noqa: E402

from trustplane.decision.canary import ENFORCED, cohort  # noqa: E402
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
CANARY = "forbid-large-refunds"
DOWN = "https://down.idp.example"  # its JWKS at a loopback port nothing listens on
ESTATE = REPO / "tests" / "outcomes" / "estate"
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
    down = {"issuer": DOWN, "jwks_uri": "http://127.0.0.1:9/jwks", "audiences": [AUDIENCE]}
    agent = next(
        f"agent{i}" for i in range(100) if cohort(f'User::"agent{i}"', CANARY, 50) == ENFORCED
    )
    with tempfile.TemporaryDirectory(prefix="tp-screens-") as tmp:
        state = Path(tmp) / "state"
        state.mkdir()
        bundle = Path(tmp) / "shop"
        shutil.copytree(SHOP, bundle)
        guardrails = bundle / "guardrails.cedar"
        guardrails.write_text(
            guardrails.read_text().replace(
                f'@id("{CANARY}")\n@owner("payments")\n@mode("observe")',
                f'@id("{CANARY}")\n@owner("payments")\n@mode("canary") @canary("50")',
            )
        )
        people = json.loads((bundle / "entities.json").read_text())
        people.append(
            {
                "uid": {"type": "User", "id": agent},
                "attrs": {"email": f"{agent}@shop.example"},
                "parents": [{"type": "Role", "id": "support"}],
            }
        )
        (bundle / "entities.json").write_text(json.dumps(people))
        kek = Path(tmp) / "kek"
        kek.write_text(new_kek())
        kek.chmod(0o600)
        ui = issuer.ui_settings(CLIENT)
        with running_server(
            state,
            f"sqlite:///{state / 'trustplane.db'}",
            bundle,
            policy__watch="false",
            pep__issuers=[*issuers, down],
            server__trusted_proxies=["127.0.0.1/32"],  # forward-auth's X-Original-URI
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

            for cents in (90_000, 120_000, 75_000):  # both cohorts of forbid-large-refunds
                refund = {**CTX, "amount_cents": cents}
                for who in ("erin", agent):
                    server.client.post(
                        "/access/v1/evaluation",
                        json=authzen(
                            ("User", who), "payments:refund", ("Api", "payments.refund"), refund
                        ),
                    )
            for iss in (ISSUER, ISSUER, DOWN):  # IdP health: one issuer up, one down
                server.client.get(
                    "/v1/forward-auth",
                    headers={
                        "X-Original-URI": "/payments/v1/transactions/1",
                        "X-Original-Method": "GET",
                        "authorization": f"Bearer {user_token(key, 'alice', iss=iss)}",
                    },
                )
            estate = ["-b", str(ESTATE / "bundle"), "-m", str(ESTATE / "manifests")]
            estate += ["--flows", str(ESTATE / "flows.json")]
            run_cli("simulate", "--all", *estate, "--save", env=server.env)
            humans = bundle / "humans.cedar"  # an edit nobody activated: drift
            humans.write_text(humans.read_text() + "\n// edited in place\n")
            server.client.get("/v1/bundle/drift", headers=server.admin)  # checked now

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
                    driver.set_window_size(1280, min(max(900, int(height) + 200), 4200))
                    target = args.out / f"{page or 'executive'}.png"
                    driver.save_screenshot(str(target))
                    print(target.relative_to(REPO) if target.is_relative_to(REPO) else target)
    issuer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
