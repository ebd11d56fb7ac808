"""The pages under /ui in a real browser (Debian's chromium through chromium-driver) against a
real server: people sign in with OIDC's authorization code flow at the loopback issuer, read
every page, approve a JIT request and see the decision it changes; forms without the session's
CSRF token, people the admin policies refuse and requests without a session are turned away,
and every page carries a strict Content-Security-Policy that the browser enforces without
complaint (no violation in its console)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.conftest import SHOP
from tests.issuer import AUDIENCE, ISSUER, Jwks, Key, user_token
from tests.support import Server, authzen, running_server, wait_for
from tests.web.browser import chromium, required, wait
from trustplane.identity.kek import new_kek

CLIENT = "trustplane-ui"
CTX = {"mfa": True, "auth_age_seconds": 60, "risk_score": 10}
BOB_LOGS = authzen(("User", "bob"), "ops:read-logs", ("Service", "checkout"), CTX)
PAGES = {
    "/ui": "Executive",
    "/ui/oncall": "On-call",
    "/ui/debug": "Debug a decision",
    "/ui/policy": "Policy",
    "/ui/rollout": "Rollout",
    "/ui/access": "Access",
    "/ui/identity": "Identity",
    "/ui/scorecard": "Scorecard",
}


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
    issuers = [{"issuer": ISSUER, "jwks_uri": issuer.uri, "audiences": [AUDIENCE, CLIENT]}]
    state = tmp_path_factory.mktemp("state")
    bundle = tmp_path_factory.mktemp("bundle") / "shop"  # a copy: one test edits it
    shutil.copytree(SHOP, bundle)
    kek_file = state.parent / f"{state.name}.kek"  # the identity plane: keys with an expiry
    kek_file.write_text(new_kek())
    kek_file.chmod(0o600)
    ui = issuer.ui_settings(CLIENT)
    with running_server(
        state,
        module_database_url,
        bundle,
        policy__watch="false",
        pep__issuers=issuers,
        admin__issuers=issuers,
        trust=json.dumps({"trusted_peps": ["anonymous"]}),
        governance__interval_ms=100,
        identity__trust_domain="web.test",
        identity__kek_file=kek_file,
        ui__authorization_endpoint=ui["authorization_endpoint"],
        ui__token_endpoint=ui["token_endpoint"],
        ui__client_id=CLIENT,
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(browser_binaries: tuple[str, str]) -> Iterator[webdriver.Chrome]:
    with chromium(*browser_binaries) as driver:
        yield driver


def sign_in(driver: webdriver.Chrome, server: Server, issuer: Jwks, user: str) -> None:
    """Through the issuer's authorization endpoint, as a person would (it signs `user` in
    without a form), and back to the executive page."""
    driver.delete_all_cookies()
    issuer.sign_in_as = user
    driver.get(server.url + "/ui")
    wait(driver).until(lambda d: d.find_elements(By.ID, "caller"))
    assert driver.find_element(By.ID, "caller").text == f'User::"{user}"'
    assert driver.current_url.rstrip("/") == server.url + "/ui"


def console_errors(driver: webdriver.Chrome) -> list[str]:
    """Severe messages of the browser's console: CSP violations and script errors."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def decide(server: Server, body: dict[str, Any]) -> dict[str, Any]:
    response = server.client.post("/access/v1/evaluation", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def session_cookie(driver: webdriver.Chrome) -> dict[str, str]:
    cookie = driver.get_cookie("tp_session")
    assert cookie is not None, "signed in, the browser holds the session cookie"
    return {"tp_session": cookie["value"]}


def admin_records(server: Server, action: str) -> list[dict[str, Any]]:
    response = server.client.get(
        "/v1/decisions", params={"kind": "admin", "limit": 200}, headers=server.admin
    )
    assert response.status_code == 200, response.text
    return [r for r in response.json()["decisions"] if r["action"] == action]


def recorded(server: Server, action: str, wanted: Any) -> list[dict[str, Any]]:
    """The admin records of `action` that `wanted(record)` accepts, once there is one: reads
    and refusals are committed with the next batch, after their answer (batch durability)."""
    found: list[dict[str, Any]] = wait_for(
        lambda: [r for r in admin_records(server, action) if wanted(r)]
    )
    return found


def test_sign_in_and_read_every_page(
    server: Server, issuer: Jwks, browser: webdriver.Chrome
) -> None:
    decide(server, BOB_LOGS)  # one denial, for the executive figures and on-call
    wait_for(
        lambda: server.client.get(
            "/v1/decisions", params={"kind": "decision"}, headers=server.admin
        ).json()["decisions"]
    )
    sign_in(browser, server, issuer, "carol")  # security: every page
    cookie = browser.get_cookie("tp_session")
    assert cookie is not None
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    browser.get_log("browser")  # start the console afresh
    for path, heading in PAGES.items():
        browser.get(server.url + path)
        wait(browser).until(lambda d: d.find_elements(By.TAG_NAME, "h1"))
        assert browser.find_element(By.TAG_NAME, "h1").text == heading, path
        current = browser.find_element(By.CSS_SELECTOR, "nav a.current")
        assert current.get_attribute("href").rstrip("/") == server.url + path
    # What each page reads from the other planes (tests/web/test_panels.py shows each one).
    browser.get(server.url + "/ui/scorecard")
    assert browser.find_elements(By.CSS_SELECTOR, "table.scorecard tr[id^=figure-]")
    assert browser.find_element(By.ID, "stages").text
    browser.get(server.url + "/ui")
    assert "scorecard M7" in browser.find_element(By.ID, "entitlements").text
    assert "deny jumps" in browser.find_element(By.ID, "incidents").text
    assert "SLO ≥ 99.9 %" in browser.find_element(By.ID, "sla").text
    # The chart library drew, so scripts from 'self' run under the policy.
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#trend canvas"))
    assert int(browser.find_element(By.ID, "total").text) >= 1
    # htmx loaded the fragments, each its own admin call (bundle:read, breakglass:read).
    browser.get(server.url + "/ui/oncall")
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#activations tbody tr"))
    browser.get(server.url + "/ui/access")
    wait(browser).until(lambda d: d.find_elements(By.ID, "overdue"))
    browser.get(server.url + "/ui/identity")
    keys = browser.find_element(By.ID, "keys").text
    assert "spiffe" in browser.find_element(By.TAG_NAME, "main").text.lower() or "web.test" in (
        browser.find_element(By.TAG_NAME, "main").text
    )
    assert "active" in keys and "UTC" in keys, "each key with its state and expiry"
    assert console_errors(browser) == [], "no CSP violation nor script error on any page"
    # The sign-in and every page view are admin records in the ledger, by who signed in.
    assert recorded(
        server, "ui:sign-in", lambda r: r["actor"] == 'User::"carol"' and r["decision"] == "allow"
    )
    carol = 'User::"carol"'
    assert recorded(
        server, "identity:read", lambda r: r["actor"] == carol and r["target"] == "identity"
    )


def test_the_on_call_page_streams_denials_as_they_are_recorded(
    server: Server, issuer: Jwks, browser: webdriver.Chrome
) -> None:
    sign_in(browser, server, issuer, "alice")
    browser.get(server.url + "/ui/oncall")
    wait(browser).until(lambda d: d.find_element(By.ID, "stream-state").text == "live")
    body = authzen(("User", "streamed-denial"), "ops:read-logs", ("Service", "checkout"), CTX)
    assert decide(server, body)["decision"] is False

    def shown() -> bool:
        rows = browser.find_elements(By.CSS_SELECTOR, "#denials tbody tr.fresh")
        return any('User::"streamed-denial"' in row.text for row in rows)

    wait(browser, 20).until(lambda d: shown())


def test_approving_a_jit_request_in_the_browser_changes_the_decision(
    server: Server, issuer: Jwks, key: Key, browser: webdriver.Chrome
) -> None:
    assert decide(server, BOB_LOGS)["decision"] is False
    asked = server.client.post(
        "/v1/access/requests",
        json={"role": 'Role::"sre"', "duration": "1h", "reason": "INC-7", "ticket": "INC-7"},
        headers={"authorization": f"Bearer {user_token(key, 'bob', aud=AUDIENCE)}"},
    )
    assert asked.status_code == 201, asked.text
    request_id = asked.json()["id"]

    sign_in(browser, server, issuer, "alice")  # an sre: access.yaml's approver
    browser.get(server.url + "/ui/access")
    row = browser.find_element(By.ID, f"request-{request_id}")
    assert 'User::"bob"' in row.text
    row.find_element(By.CSS_SELECTOR, "form input[name=comment]").send_keys("on call tonight")
    row.find_element(By.CSS_SELECTOR, "button.approve").click()
    wait(browser).until(lambda d: d.find_elements(By.ID, "done"))
    assert "approved" in browser.find_element(By.ID, "done").text
    assert not browser.find_elements(By.ID, f"request-{request_id}")
    assert 'User::"bob"' in browser.find_element(By.ID, "grants").text

    answer = decide(server, BOB_LOGS)
    assert answer["decision"] is True, "the grant approved in the browser applies at once"
    approvals = admin_records(server, "access:approve")
    assert any(
        r["actor"] == 'User::"alice"'
        and r["target"] == f"request:{request_id}"
        and r["decision"] == "allow"
        for r in approvals
    ), "the approval is in the ledger with who approved"

    # The decision that grant allowed, read on the debug page.
    found = wait_for(
        lambda: [
            r
            for r in server.client.get(
                "/v1/decisions",
                params={"principal": 'User::"bob"', "decision": "allow"},
                headers=server.admin,
            ).json()["decisions"]
            if r.get("grants")
        ]
    )
    decision_id = found[0]["decision_id"]
    browser.get(server.url + f"/ui/debug?id={decision_id}")
    assert browser.find_element(By.ID, "answer").text.startswith("allow")
    sections = browser.find_elements(By.CSS_SELECTOR, ".debug-section")
    grants = next(s for s in sections if s.text.startswith("Grants and exceptions"))
    assert found[0]["grants"][0] in grants.text
    wait(browser).until(
        lambda d: d.find_elements(By.ID, "proof-ok") or d.find_elements(By.ID, "proof-absent")
    )


def test_denying_a_jit_request_in_the_browser_needs_a_reason_and_leaves_the_decision_denied(
    server: Server, issuer: Jwks, key: Key, browser: webdriver.Chrome
) -> None:
    asked = server.client.post(
        "/v1/access/requests",
        json={"role": 'Role::"sre"', "duration": "1h", "reason": "curious", "ticket": "INC-10"},
        headers={"authorization": f"Bearer {user_token(key, 'bob', aud=AUDIENCE)}"},
    )
    assert asked.status_code == 201, asked.text
    request_id = asked.json()["id"]
    sign_in(browser, server, issuer, "alice")
    browser.get(server.url + "/ui/access")
    row = browser.find_element(By.ID, f"request-{request_id}")
    row.find_element(By.CSS_SELECTOR, "input[name=reason]").send_keys("no incident open")
    row.find_element(By.CSS_SELECTOR, "button.deny").click()
    wait(browser).until(lambda d: d.find_elements(By.ID, "done"))
    assert "denied" in browser.find_element(By.ID, "done").text
    decided = server.client.get(f"/v1/access/requests/{request_id}", headers=server.admin)
    assert decided.json()["status"] == "denied"
    denials = admin_records(server, "access:deny")
    assert any(r["actor"] == 'User::"alice"' and r["reason"] == "no incident open" for r in denials)


def test_a_form_without_the_sessions_csrf_token_is_refused_and_recorded(
    server: Server, issuer: Jwks, key: Key, browser: webdriver.Chrome
) -> None:
    asked = server.client.post(
        "/v1/access/requests",
        json={"role": 'Role::"sre"', "duration": "1h", "reason": "INC-8", "ticket": "INC-8"},
        headers={"authorization": f"Bearer {user_token(key, 'bob', aud=AUDIENCE)}"},
    )
    assert asked.status_code == 201, asked.text
    request_id = asked.json()["id"]
    sign_in(browser, server, issuer, "alice")
    cookies = session_cookie(browser)
    url = f"{server.url}/ui/access/requests/{request_id}/approve"
    for form in ({"comment": "no token"}, {"comment": "forged", "csrf": "not-the-sessions"}):
        refused = httpx.post(url, data=form, cookies=cookies, follow_redirects=False)
        assert refused.status_code == 403, refused.text
        assert "CSRF" in refused.text and refused.headers["content-type"].startswith("text/html")
    still = server.client.get(f"/v1/access/requests/{request_id}", headers=server.admin)
    assert still.json()["status"] == "pending"
    refusals = [
        r for r in admin_records(server, "access:approve") if r["target"] == f"request:{request_id}"
    ]
    assert refusals and all(r["decision"] == "deny" for r in refusals)
    assert "CSRF" in refusals[0]["details"]["refused"]


def test_every_page_carries_a_strict_content_security_policy(
    server: Server, issuer: Jwks, browser: webdriver.Chrome
) -> None:
    sign_in(browser, server, issuer, "carol")
    cookies = session_cookie(browser)
    for path in [*PAGES, "/ui/login"]:
        response = httpx.get(server.url + path, cookies=cookies, follow_redirects=False)
        policy = response.headers.get("content-security-policy", "")
        assert "script-src 'self'" in policy, path
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, path
        assert "frame-ancestors 'none'" in policy, path
    page = httpx.get(server.url + "/ui", cookies=cookies)
    assert "<script>" not in page.text and " on" + "click=" not in page.text


def test_people_the_admin_policy_refuses_and_callers_without_a_session_are_turned_away(
    server: Server, issuer: Jwks, browser: webdriver.Chrome
) -> None:
    sign_in(browser, server, issuer, "bob")  # a developer: may read decisions, not identities
    browser.get(server.url + "/ui/identity")
    assert browser.find_element(By.ID, "error-title").text.startswith("403")
    assert "identity:read" in browser.find_element(By.ID, "error-detail").text
    assert recorded(
        server, "identity:read", lambda r: r["actor"] == 'User::"bob"' and r["decision"] == "deny"
    )

    anonymous = httpx.get(server.url + "/ui/policy", follow_redirects=False)
    assert anonymous.status_code == 303
    assert anonymous.headers["location"].startswith("/ui/login?next=")
    forged = httpx.get(
        server.url + "/ui/policy", cookies={"tp_session": "forged"}, follow_redirects=False
    )
    assert forged.status_code == 401, "a refused session ends on a page, not in a sign-in loop"
    assert 'tp_session=""' in forged.headers["set-cookie"], "and the cookie is cleared"
    sse = httpx.get(server.url + "/ui/oncall/stream", follow_redirects=False)
    assert sse.status_code == 401, "a stream is never redirected to a sign-in page"

    issuer.sign_in_as = None  # the issuer refuses: nobody signs in
    browser.delete_all_cookies()
    browser.get(server.url + "/ui/access")
    assert not browser.find_elements(By.ID, "caller")


def test_closing_a_break_glass_review_in_the_browser_and_never_ones_own(
    server: Server, issuer: Jwks, key: Key, browser: webdriver.Chrome
) -> None:
    opened = server.client.post(
        "/v1/break-glass",
        json={"profile": "payments-db", "reason": "INC-9 payments db down"},
        headers={"authorization": f"Bearer {user_token(key, 'alice', aud=AUDIENCE)}"},
    )
    assert opened.status_code == 201, opened.text
    session_id = opened.json()["session"]["id"]
    form = f"form[action='/ui/break-glass/{session_id}/review']"

    sign_in(browser, server, issuer, "alice")  # who broke the glass does not close the review
    browser.get(server.url + "/ui/access")
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, form))
    browser.find_element(By.CSS_SELECTOR, f"{form} input[name=notes]").send_keys("all fine")
    browser.find_element(By.CSS_SELECTOR, f"{form} button").click()
    wait(browser).until(lambda d: d.find_elements(By.ID, "error-title"))
    assert browser.find_element(By.ID, "error-title").text.startswith("403")
    assert "no-self-review" in browser.find_element(By.ID, "error-detail").text

    sign_in(browser, server, issuer, "carol")
    browser.get(server.url + "/ui/access")
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, form))
    notes = "restored the replica; the session was needed"
    browser.find_element(By.CSS_SELECTOR, f"{form} input[name=notes]").send_keys(notes)
    browser.find_element(By.CSS_SELECTOR, f"{form} button").click()
    wait(browser).until(lambda d: d.find_elements(By.ID, "done"))
    assert "reviewed" in browser.find_element(By.ID, "done").text
    sessions = server.client.get("/v1/break-glass", headers=server.admin).json()["sessions"]
    review = next(s["review"] for s in sessions if s["session"]["id"] == session_id)
    assert review["closed_by"] == 'User::"carol"' and review["notes"] == notes


def test_rolling_back_from_the_policy_page(
    server: Server, issuer: Jwks, browser: webdriver.Chrome
) -> None:
    bundle_dir = Path(server.env["TRUSTPLANE_POLICY__BUNDLE_DIR"])
    first = server.client.get("/v1/bundle", headers=server.admin).json()["active"]["revision"]
    humans = bundle_dir / "humans.cedar"
    humans.write_text(humans.read_text() + "\n// a comment: a new revision\n")
    reloaded = server.client.post("/v1/bundle/reload", headers=server.admin)
    assert reloaded.status_code == 200, reloaded.text
    second = reloaded.json()["active"]["revision"]
    assert second != first

    sign_in(browser, server, issuer, "carol")  # security: bundle:write
    browser.get(server.url + "/ui/policy")
    assert browser.find_element(By.ID, "revision").text == second
    browser.find_element(
        By.CSS_SELECTOR, f"#history form:has(input[value='{first}']) button"
    ).click()
    wait(browser).until(lambda d: d.find_elements(By.ID, "done"))
    assert browser.find_element(By.ID, "revision").text == first
    active = server.client.get("/v1/bundle", headers=server.admin).json()["active"]
    assert active["revision"] == first
    rollbacks = admin_records(server, "bundle:write")
    assert any(
        r["actor"] == 'User::"carol"' and r["target"] == f"bundle:{first}" for r in rollbacks
    )


def test_labelling_a_would_deny_on_the_rollout_page(
    server: Server, issuer: Jwks, browser: webdriver.Chrome
) -> None:
    refund = {**CTX, "amount_cents": 90000}
    body = authzen(("User", "erin"), "payments:refund", ("Api", "payments.refund"), refund)
    answer = decide(server, body)
    assert answer["decision"] is True  # forbid-large-refunds only observes
    wait_for(
        lambda: server.client.get(
            "/v1/decisions",
            params={"principal": 'User::"erin"', "shadow_mismatch": "true"},
            headers=server.admin,
        ).json()["decisions"]
    )
    sign_in(browser, server, issuer, "carol")
    browser.get(server.url + "/ui/rollout")
    section = next(
        s
        for s in browser.find_elements(By.CSS_SELECTOR, "section.policy-gate")
        if s.find_element(By.TAG_NAME, "h2").text.startswith("forbid-large-refunds")
    )
    row = next(r for r in section.find_elements(By.CSS_SELECTOR, "tbody tr") if "erin" in r.text)
    row.find_element(By.CSS_SELECTOR, "select[name=verdict] option[value=false-positive]").click()
    row.find_element(By.CSS_SELECTOR, "input[name=note]").send_keys("finance pre-approved it")
    row.find_element(By.CSS_SELECTOR, "button").click()
    wait(browser).until(lambda d: d.find_elements(By.ID, "done"))
    assert "labelled 1 as false-positive" in browser.find_element(By.ID, "done").text
    labels = admin_records(server, "rollout:label")
    assert any(
        r["actor"] == 'User::"carol"'
        and r["target"] == "policy:forbid-large-refunds"
        and r["reason"] == "finance pre-approved it"
        for r in labels
    )


def test_a_revoked_person_is_refused_at_the_next_page(
    server: Server, issuer: Jwks, browser: webdriver.Chrome
) -> None:
    sign_in(browser, server, issuer, "dave")
    browser.get(server.url + "/ui/oncall")
    assert browser.find_element(By.TAG_NAME, "h1").text == "On-call"
    revoked = server.client.post(
        "/v1/revocations",
        json={"kind": "principal", "target": 'User::"dave"', "reason": "left the company"},
        headers=server.admin,
    )
    assert revoked.status_code == 201, revoked.text
    browser.get(server.url + "/ui/oncall")
    assert browser.find_element(By.ID, "error-title").text.startswith("401")
    assert "revoked" in browser.find_element(By.ID, "error-detail").text
    assert browser.get_cookie("tp_session") is None, "the session is over"
    browser.get(server.url + "/ui")  # and signing in again is refused, and recorded
    wait(browser).until(lambda d: d.find_elements(By.ID, "error-detail"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Sign-in failed"
    assert "revoked" in browser.find_element(By.ID, "error-detail").text
    assert browser.get_cookie("tp_session") is None
    assert recorded(
        server,
        "ui:sign-in",
        lambda r: r["decision"] == "deny" and "dave" in str(r["details"].get("presented")),
    )
