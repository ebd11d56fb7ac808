"""The panels the pages read from the other planes, in a real browser against a real server,
each showing what traffic the test made: the on-call page's PDP latency heatmap (the ledger's
`eval_micros`) and IdP health (the token verifier's JWKS state: an issuer whose JWKS cannot be
fetched is down), the policy page's drift after an edit nobody activated and its incident, the
executive page's 30-day auth success against the SLO and its incidents, the scorecard's
lateral-movement resistance from a saved simulation, and a canary policy's cohorts with the
promote hint on the rollout page, and a deny jump after a bad activation among the executive
page's incidents."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.conftest import SHOP
from tests.issuer import AUDIENCE, ISSUER, Jwks, Key, user_token
from tests.support import Server, authzen, run_cli, running_server, wait_for
from tests.web.browser import chromium, required
from tests.web.test_pages import CLIENT, CTX, console_errors, decide, sign_in
from trustplane.decision.canary import ENFORCED, OBSERVED, cohort

DOWN = "https://down.idp.test.example"  # an issuer whose JWKS nothing answers
ESTATE = Path(__file__).parent.parent / "outcomes" / "estate"
CANARY = "forbid-large-refunds"
JUMP_DENIES = 5
FREEZE = """@id("freeze-refunds")
@owner("payments")
@description("misdeploy: meant for the staging refunds API, matches production's")
forbid (principal, action == Action::"payments:refund", resource);
"""


@pytest.fixture(scope="module")
def browser(browser_binaries: tuple[str, str]) -> Iterator[webdriver.Chrome]:
    with chromium(*browser_binaries) as driver:
        yield driver


@pytest.fixture(scope="module")
def browser_binaries() -> tuple[str, str]:
    return required()


@pytest.fixture(scope="module")
def server(
    module_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    issuer: Jwks,
    key: Key,
    browser_binaries: tuple[str, str],
) -> Iterator[Server]:
    issuer.signer = key
    admins = [{"issuer": ISSUER, "jwks_uri": issuer.uri, "audiences": [AUDIENCE, CLIENT]}]
    # Port 9 (discard) on loopback: nothing listens, every JWKS fetch fails at once.
    down = {"issuer": DOWN, "jwks_uri": "http://127.0.0.1:9/jwks", "audiences": [AUDIENCE]}
    state = tmp_path_factory.mktemp("state")
    bundle = tmp_path_factory.mktemp("bundle") / "shop"  # a copy: the tests edit it
    shutil.copytree(SHOP, bundle)
    ui = issuer.ui_settings(CLIENT)
    with running_server(
        state,
        module_database_url,
        bundle,
        policy__watch="false",
        pep__issuers=[*admins, down],
        admin__issuers=admins,
        trust=json.dumps({"trusted_peps": ["anonymous"]}),
        ui__authorization_endpoint=ui["authorization_endpoint"],
        ui__token_endpoint=ui["token_endpoint"],
        ui__client_id=CLIENT,
        ui__summary_seconds=0,  # every view reads the month afresh
        governance__deny_jump_min_denies=JUMP_DENIES,
        governance__deny_jump_ratio=3,
    ) as srv:
        yield srv


def forward_auth(server: Server, token: str) -> str:
    """A held request through forward-auth with a person's bearer token; its decision id."""
    response = server.client.get(
        "/v1/forward-auth",
        headers={
            "X-Original-URI": "/payments/v1/transactions/1",
            "X-Original-Method": "GET",
            "authorization": f"Bearer {token}",
        },
    )
    assert response.status_code in (200, 401, 403), response.text
    return response.headers["x-trustplane-decision-id"]


def recorded(server: Server, decision_id: str) -> None:
    wait_for(
        lambda: (
            server.client.get(f"/v1/decisions/{decision_id}", headers=server.admin).status_code
            == 200
        )
    )


def reload(server: Server) -> str:
    response = server.client.post("/v1/bundle/reload", headers=server.admin)
    assert response.status_code == 200, response.text
    revision: str = response.json()["active"]["revision"]
    return revision


def test_on_call_shows_latency_and_the_idps_health(
    server: Server, issuer: Jwks, key: Key, browser: webdriver.Chrome
) -> None:
    sign_in(browser, server, issuer, "carol")
    browser.get_log("browser")  # the console afresh (the sign-in's favicon)
    browser.get(server.url + "/ui/oncall")
    before = browser.find_elements(By.CSS_SELECTOR, "#idps tr[data-issuer]")
    assert {r.get_attribute("data-issuer") for r in before} == {ISSUER, DOWN}
    assert all("not fetched" in r.text for r in before), "no token has arrived yet"

    good = forward_auth(server, user_token(key, "alice", aud=AUDIENCE))
    refused = forward_auth(server, user_token(key, "alice", aud=AUDIENCE, iss=DOWN))
    for decision_id in (good, refused):
        recorded(server, decision_id)
    browser.get(server.url + "/ui/oncall")
    idps = {
        r.get_attribute("data-issuer"): r.text
        for r in browser.find_elements(By.CSS_SELECTOR, "#idps tr[data-issuer]")
    }
    assert " up " in f" {idps[ISSUER]} " and re.search(r"\d+ s", idps[ISSUER])
    assert " down " in f" {idps[DOWN]} " and idps[DOWN].endswith("—"), "never fetched well"

    # The heatmap counts the decisions of the last hour by their recorded evaluation time.
    totals = [
        int(row.find_elements(By.TAG_NAME, "td")[-1].text)
        for row in browser.find_elements(By.CSS_SELECTOR, "#latency tbody tr")
    ]
    assert len(totals) == 12, "one row per 5 minutes"
    assert sum(totals) >= 1
    assert browser.find_elements(By.CSS_SELECTOR, "#latency td.heat-4"), "the busiest cell"
    assert "not measured" in browser.find_element(By.ID, "issuance-lag").text
    assert console_errors(browser) == []


def test_the_executive_page_measures_the_sla_over_30_days(
    server: Server, issuer: Jwks, key: Key, browser: webdriver.Chrome
) -> None:
    refused = forward_auth(server, user_token(key, "alice", aud=AUDIENCE, iss=DOWN))
    recorded(server, refused)
    decisions = server.client.get(
        "/v1/decisions", params={"kind": "decision", "limit": 500}, headers=server.admin
    ).json()["decisions"]
    sign_in(browser, server, issuer, "carol")
    browser.get(server.url + "/ui")
    sla = browser.find_element(By.ID, "sla").text
    found = re.search(r"(\d+) of (\d+) decisions failed closed on an error", sla)
    assert found, sla
    failed, total = int(found[1]), int(found[2])
    assert failed >= 1 and total >= len(decisions) >= failed
    assert "missed" in sla and "SLO ≥ 99.9 %" in sla, "a refused credential in a handful"
    assert f"{100 * (total - failed) / total:.3f} %" in sla
    m1 = re.search(r"\((\d+) refused; scorecard M1\)", sla)
    assert m1 and int(m1[1]) >= 1, sla
    assert "scorecard M7" in browser.find_element(By.ID, "entitlements").text


def test_an_edit_nobody_activated_is_drift_and_an_incident(
    server: Server, issuer: Jwks, browser: webdriver.Chrome
) -> None:
    bundle_dir = Path(server.env["TRUSTPLANE_POLICY__BUNDLE_DIR"])
    humans = bundle_dir / "humans.cedar"
    original = humans.read_text()
    sign_in(browser, server, issuer, "carol")
    browser.get(server.url + "/ui/policy")
    assert browser.find_element(By.ID, "drift").text.startswith("In sync")
    humans.write_text(original + "\n// edited in place, never activated\n")
    try:
        browser.get(server.url + "/ui/policy")
        assert browser.find_element(By.ID, "drift").text.startswith("Drift")
        assert "changed: humans.cedar" in browser.find_element(By.ID, "drift-files").text
        rows = browser.find_elements(By.CSS_SELECTOR, "#drift-incidents tbody tr")
        assert "open" in rows[0].text and "humans.cedar" in rows[0].text
        browser.get(server.url + "/ui")
        assert int(browser.find_element(By.CSS_SELECTOR, "#incidents .figure").text) >= 1
        listed = browser.find_element(By.ID, "incident-list").text
        assert "policy drift" in listed and "humans.cedar" in listed
    finally:
        humans.write_text(original)
    browser.get(server.url + "/ui/policy")
    assert browser.find_element(By.ID, "drift").text.startswith("In sync")
    first = browser.find_elements(By.CSS_SELECTOR, "#drift-incidents tbody tr")[0].text
    assert "open" not in first and "UTC" in first, "cleared, with its time"


def test_the_scorecard_shows_lateral_movement_from_a_saved_simulation(
    server: Server, issuer: Jwks, browser: webdriver.Chrome
) -> None:
    sign_in(browser, server, issuer, "carol")
    browser.get(server.url + "/ui/scorecard")
    assert (
        "no compromise simulation saved"
        in browser.find_element(By.ID, "figure-lateral_movement").text
    )
    args = ["-b", str(ESTATE / "bundle"), "-m", str(ESTATE / "manifests")]
    args += ["--flows", str(ESTATE / "flows.json")]
    done = run_cli("simulate", "--all", *args, "--save", "--json", env=server.env)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)["lateral_movement"]
    browser.get(server.url + "/ui/scorecard")
    row = browser.find_element(By.ID, "figure-lateral_movement").text
    blocked, paths = figures["blocked_by_authz"], figures["paths_without_authz"]
    assert f"{blocked} of {paths} paths to tier 0 blocked" in row
    assert "not measured" not in row


def test_a_canary_policy_shows_its_cohorts_and_the_promote_hint(
    server: Server, issuer: Jwks, browser: webdriver.Chrome
) -> None:
    bundle_dir = Path(server.env["TRUSTPLANE_POLICY__BUNDLE_DIR"])
    guardrails, entities = bundle_dir / "guardrails.cedar", bundle_dir / "entities.json"
    kept = {path: path.read_text() for path in (guardrails, entities)}
    # erin (the bundle's tests' support agent) stays observed at 50 %; a second agent is
    # picked in the enforced cohort, so each cohort gets a denial of a large refund.
    assert cohort('User::"erin"', CANARY, 50) == OBSERVED
    agent = next(
        f"agent{i}" for i in range(100) if cohort(f'User::"agent{i}"', CANARY, 50) == ENFORCED
    )
    people = json.loads(kept[entities])
    people.append(
        {
            "uid": {"type": "User", "id": agent},
            "attrs": {"email": f"{agent}@shop.example"},
            "parents": [{"type": "Role", "id": "support"}],
        }
    )
    edited = kept[guardrails].replace(
        f'@id("{CANARY}")\n@owner("payments")\n@mode("observe")',
        f'@id("{CANARY}")\n@owner("payments")\n@mode("canary") @canary("50")',
    )
    assert edited != kept[guardrails]
    try:
        guardrails.write_text(edited)
        entities.write_text(json.dumps(people))
        reload(server)
        refund = {**CTX, "amount_cents": 90000}
        observed = decide(
            server, authzen(("User", "erin"), "payments:refund", ("Api", "payments.refund"), refund)
        )
        enforced = decide(
            server, authzen(("User", agent), "payments:refund", ("Api", "payments.refund"), refund)
        )
        assert observed["decision"] is True and enforced["decision"] is False
        for answer in (observed, enforced):
            recorded(server, answer["context"]["decision_id"])
        sign_in(browser, server, issuer, "carol")
        browser.get(server.url + "/ui/rollout")
        section = next(
            s
            for s in browser.find_elements(By.CSS_SELECTOR, "section.policy-gate")
            if s.find_element(By.TAG_NAME, "h2").text.startswith(CANARY)
        )
        assert "canary 50" in section.find_element(By.TAG_NAME, "h2").text
        cohorts = {
            row.get_attribute("data-cohort"): [
                td.text for td in row.find_elements(By.TAG_NAME, "td")
            ]
            for row in section.find_elements(By.CSS_SELECTOR, "table.cohorts tr[data-cohort]")
        }
        assert set(cohorts) == {"observed", "enforced"}
        assert int(cohorts["observed"][1]) >= 1 and int(cohorts["enforced"][1]) >= 1
        hint = browser.find_element(By.TAG_NAME, "main").text
        assert "trustplane policy promote" in hint
    finally:
        for path, text in kept.items():
            path.write_text(text)
        reload(server)


def test_a_deny_jump_after_an_activation_is_an_auth_incident(
    server: Server, issuer: Jwks, browser: webdriver.Chrome
) -> None:
    bundle_dir = Path(server.env["TRUSTPLANE_POLICY__BUNDLE_DIR"])
    tests = bundle_dir.parent / "kept-tests"
    small = authzen(
        ("User", "erin"),
        "payments:refund",
        ("Api", "payments.refund"),
        {**CTX, "amount_cents": 1000},
    )
    assert all(decide(server, small)["decision"] for _ in range(40))
    shutil.move(bundle_dir / "tests", tests)  # the misdeploy's tests went with it
    (bundle_dir / "freeze.cedar").write_text(FREEZE)
    try:
        bad = reload(server)
        assert not any(decide(server, small)["decision"] for _ in range(JUMP_DENIES + 5))
        jump = wait_for(
            lambda: [
                r
                for r in server.client.get(
                    "/v1/decisions", params={"kind": "admin", "limit": 200}, headers=server.admin
                ).json()["decisions"]
                if r["action"] == "bundle:deny-jump" and r["target"] == f"bundle:{bad}"
            ]
        )[0]
    finally:
        (bundle_dir / "freeze.cedar").unlink()
        shutil.move(tests, bundle_dir / "tests")
        reload(server)
    sign_in(browser, server, issuer, "carol")
    browser.get(server.url + "/ui")
    rows = browser.find_elements(By.CSS_SELECTOR, "#incident-list tbody tr")
    jumped = [r.text for r in rows if "deny jump" in r.text]
    assert jumped and "freeze-refunds" in jumped[0], [r.text for r in rows]
    assert jump["reason"].split(";")[0] in jumped[0]
