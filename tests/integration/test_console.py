"""The operators' console over the real services: accounts and roles (every /v1/admin route
checked for every role, from the route table), sessions (CSRF, fixation, logout, disable,
lock-out), the audit trail, the member service with maker / checker, in Debian's Chromium."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from devtools.workers import WorkerProcess, redis_client
from streams import operators as ops
from streams.settings import ROOT
from streams.signing import signed_headers
from tests.integration.test_engagement import now_iso
from tests.unit.test_operators import admin_routes

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / ".local" / "artifacts"
PASSWORD = "correct horse battery staple"


class Console:
    """An operator's HTTP client: the session cookie and CSRF token of its login."""

    def __init__(self, w: WorkerProcess) -> None:
        self.w, self.cookie, self.csrf = w, "", ""

    def call(self, method: str, path: str, body: Any = None, *, csrf: str | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        h = {"Content-Type": "application/json", **(headers or {})}
        if self.cookie:
            h["Cookie"] = f"ly_console={self.cookie}"
        if method == "POST":
            h["X-CSRF-Token"] = self.csrf if csrf is None else csrf
        data = orjson.dumps(body if body is not None else {}) if method == "POST" else None
        req = urllib.request.Request(self.w.base_url + path, data=data, headers=h, method=method)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, orjson.loads(r.read() or b"null"), dict(r.headers)
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, orjson.loads(raw) if raw.startswith(b"{") else raw.decode(), dict(e.headers)

    def login(self, login: str, password: str = PASSWORD) -> tuple[int, Any]:
        status, body, headers = self.call("POST", "/v1/console/login", {"login": login, "password": password})
        if status == 200:
            self.cookie = headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
            self.csrf = body["csrf"]
        return status, body


def add_operator(w: WorkerProcess, login: str, role: str, **scope: str) -> None:
    body = orjson.dumps({"login": login, "role": role, "password": PASSWORD, **scope})
    status, answer = w.post("/v1/admin/operators", body, {"Authorization": f"Bearer {w.admin_token}"})
    assert status == 201, answer


def member_event(w: WorkerProcess, event: dict[str, Any]) -> None:
    body = orjson.dumps(event)
    assert w.post("/v1/callbacks/member", body, signed_headers(w.callback_secret, body))[0] == 202


def pay(w: WorkerProcess, member: str, bu: str, merchant: str, amount_fen: int) -> None:
    ev = {"event_id": f"p-{uuid.uuid4().hex[:12]}", "type": "payment", "occurred_at": now_iso(), "member_id": member,
          "bu_id": bu, "merchant_id": merchant, "category": "fashion", "amount_fen": amount_fen, "channel": "wechat"}
    assert w.send_callback(ev)[0] == 202


def available(w: WorkerProcess, member: str) -> int:
    status, body = w.get(f"/v1/members/{member}")
    return int(body["available"]) if status == 200 else -1


def audit_rows(w: WorkerProcess, **query: str) -> list[dict[str, Any]]:
    from urllib.parse import urlencode

    return w.get("/v1/admin/audit?" + urlencode(query))[1]["rows"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def cw(services: None, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.integration.conftest import new_worker

    w = new_worker(tmp_path_factory.mktemp("console"), "console")
    w.start()
    for login, role, scope in [("admin-wang", "group_admin", {}), ("bu-zhao", "bu_operator", {"bu": "sh-mall"}),
                               ("shop-qian", "merchant_staff", {"merchant": "sh-mall-shop-01"}),
                               ("cs-li", "customer_service", {}), ("cs-zhou", "customer_service", {}),
                               ("audit-sun", "auditor", {})]:
        add_operator(w, login, role, **scope)
    yield w
    w.stop()
    w.cleanup()


ROLE_LOGINS = {"group_admin": "admin-wang", "bu_operator": "bu-zhao", "merchant_staff": "shop-qian",
               "customer_service": "cs-li", "auditor": "audit-sun"}


def concrete(route: str) -> str:
    return (route.replace("{member_id}", "m-nobody").replace("{game}", "g").replace("{event_id}", "e-1")
            .replace("{approval_id}", "a-none").replace("{login}", "nobody"))


def test_every_admin_route_refuses_what_each_role_may_not_do(cw: WorkerProcess) -> None:
    routes = sorted(admin_routes())
    anonymous = Console(cw)
    for method, route in routes:
        status, body, _ = anonymous.call(method, concrete(route))
        assert status == 401, (method, route, status, body)
    checked = 0
    for role, login in ROLE_LOGINS.items():
        c = Console(cw)
        assert c.login(login)[0] == 200, login
        for method, route in routes:
            allowed = ops.POLICY[(method, route)] in ops.GRANTS[role]
            if allowed and method == "POST":
                continue  # its effect is tested below; here only the refusals
            status, body, _ = c.call(method, concrete(route))
            if allowed:
                assert status not in (401, 403) or "outside" in str(body) or "only" in str(body), \
                    (role, method, route, status, body)
            else:
                assert status == 403 and "may not" in body["error"], (role, method, route, status, body)
            checked += 1
    assert checked > 80
    # The admin token is a role of its own (automation) and reaches everything.
    assert cw.get("/v1/admin/operators")[0] == 200


def test_sessions_csrf_fixation_logout_disable_and_lockout(cw: WorkerProcess) -> None:
    add_operator(cw, "cs-temp", "customer_service")
    c = Console(cw)
    planted = Console(cw)
    assert planted.login("cs-zhou")[0] == 200
    # Fixation: a cookie planted before the login is replaced by a fresh session.
    c.cookie = planted.cookie
    assert c.login("cs-temp")[0] == 200
    assert c.cookie != planted.cookie and c.csrf != planted.csrf
    assert c.call("GET", "/v1/admin/session")[1]["login"] == "cs-temp"
    # CSRF: a change without the session's token, or from another origin, is refused.
    m = f"c-{uuid.uuid4().hex[:8]}"
    member_event(cw, {"event_id": f"reg-{m}", "type": "register", "occurred_at": now_iso(), "member_id": m})
    cw.wait_until(lambda: available(cw, m) >= 0, timeout=60, what="registered")
    adj = {"adjustment_id": f"a-{uuid.uuid4().hex[:8]}", "points": 5, "reason": "goodwill"}
    path = f"/v1/admin/members/{m}/adjustments"
    assert c.call("POST", path, adj, csrf="")[0] == 403
    assert c.call("POST", path, adj, csrf=planted.csrf)[0] == 403
    assert c.call("POST", path, adj, headers={"Origin": "http://evil.example"})[0] == 403
    assert c.call("POST", path, adj)[0] == 201
    # Logout ends that session (the cookie kept by an attacker no longer works).
    kept = c.cookie
    assert c.call("POST", "/v1/console/logout")[0] == 200
    c.cookie = kept
    assert c.call("GET", "/v1/admin/session")[0] == 401
    # Disabling an operator ends their sessions at once, and they cannot sign in again.
    d = Console(cw)
    assert d.login("cs-temp")[0] == 200
    token = {"Authorization": f"Bearer {cw.admin_token}"}
    assert cw.post("/v1/admin/operators/cs-temp/disable", b"{}", token)[0] == 200
    assert d.call("GET", "/v1/admin/session")[0] == 401
    assert Console(cw).login("cs-temp")[0] == 401
    # Lock-out: five failures lock the login, even for the right password; a reset lifts it.
    add_operator(cw, "cs-lock", "customer_service")
    wrong = [Console(cw).login("cs-lock", f"wrong password nr {i}")[0] for i in range(5)]
    assert wrong == [401] * 5
    status, body = Console(cw).login("cs-lock")
    assert status == 423 and "locked" in body["error"]
    assert Console(cw).login("nobody-here", "whatever it is")[0] == 401, "same answer for an unknown login"
    reset = orjson.dumps({"password": "a new long password"})
    assert cw.post("/v1/admin/operators/cs-lock/reset-password", reset,
                   {"Authorization": f"Bearer {cw.admin_token}"})[0] == 200
    assert Console(cw).login("cs-lock", "a new long password")[0] == 200
    # Passwords never stored or logged in clear; the hash is argon2id.
    r = redis_client(cw.redis_url)
    stored = r.get(f"{cw.run_id}:op:cs-lock")
    assert stored is not None and b"$argon2id$" in stored and b"a new long password" not in stored
    log_text = Path(cw.log_path).read_text(errors="replace")  # type: ignore[arg-type]
    for secret in (PASSWORD, "a new long password", "wrong password nr"):
        assert secret not in log_text
    cw.wait_caught_up()  # the audit rows in ClickHouse
    actions = {row["action"] for row in audit_rows(cw, operator="cs-lock")}
    assert {"operator.login-failed", "operator.locked", "operator.login"} <= actions
    assert {r["action"] for r in audit_rows(cw, operator="admin-token")} >= {
        "operator.add", "operator.disable", "operator.reset-password"}


def test_scope_of_a_bu_operator_and_merchant_staff(cw: WorkerProcess) -> None:
    mall, hotel = f"s-{uuid.uuid4().hex[:8]}", f"s-{uuid.uuid4().hex[:8]}"
    pay(cw, mall, "sh-mall", "sh-mall-shop-01", 10_000)
    pay(cw, hotel, "sh-hotel", "sh-hotel-room", 10_000)
    cw.wait_until(lambda: available(cw, mall) > 0 and available(cw, hotel) > 0, timeout=60, what="both paid")
    cw.wait_caught_up()  # their ledger rows in ClickHouse (a BU operator's scope is read there)
    bu = Console(cw)
    assert bu.login("bu-zhao")[0] == 200
    assert bu.call("GET", f"/v1/admin/members/{mall}/overview")[0] == 200
    status, body, _ = bu.call("GET", f"/v1/admin/members/{hotel}/overview")
    assert status == 403 and "outside" in body["error"]
    adj = {"adjustment_id": f"a-{uuid.uuid4().hex[:8]}", "points": 5, "reason": "not theirs"}
    assert bu.call("POST", f"/v1/admin/members/{hotel}/adjustments", adj)[0] == 403
    assert bu.call("GET", "/v1/admin/settlement/statement?date=2026-11-30&bu=sh-hotel")[0] == 403
    assert bu.call("GET", "/v1/admin/settlement/statement?date=2026-11-30&bu=sh-mall")[0] == 200
    shop = Console(cw)
    assert shop.login("shop-qian")[0] == 200
    assert shop.call("GET", "/v1/admin/settlement/statement?date=2026-11-30&merchant=sh-mall-shop-02")[0] == 403
    assert shop.call("GET", "/v1/admin/settlement/statement?date=2026-11-30&merchant=sh-mall-shop-01")[0] == 200
    assert shop.call("GET", f"/v1/admin/members/{mall}/overview")[0] == 403


def test_operators_are_durable_facts_restored_by_rebuild(cw: WorkerProcess) -> None:
    add_operator(cw, "cs-durable", "customer_service")
    r = redis_client(cw.redis_url)
    key = f"{cw.run_id}:op:cs-durable"
    cw.wait_caught_up()  # the account's row is in ClickHouse (sent before the answer, inserted by now)
    status, rec = cw.get("/v1/admin/reconcile?kinds=1")
    assert status == 200 and {k["kind"]: k["differ"] for k in rec["by_kind"]["kinds"]}["bindings"] == 0, rec
    r.delete(key)
    assert Console(cw).login("cs-durable")[0] == 401
    status, page = cw.post("/v1/admin/rebuild", orjson.dumps({"offset": 0, "limit": 10_000}),
                           {"Authorization": f"Bearer {cw.admin_token}"})
    assert status == 200, page
    assert Console(cw).login("cs-durable")[0] == 200


def test_member_service_flow_in_a_real_browser(cw: WorkerProcess) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: scripts/test installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    m = f"b-{uuid.uuid4().hex[:8]}"
    phone = f"139{uuid.uuid4().int % 10**8:08d}"
    member_event(cw, {"event_id": f"reg-{m}", "type": "register", "occurred_at": now_iso(), "member_id": m,
                      "external_ids": [{"kind": "phone", "id": phone}]})
    pay(cw, m, "sh-mall", "sh-mall-shop-01", 25_000)
    cw.wait_until(lambda: available(cw, m) > 100, timeout=60, what="the member's points")
    cw.wait_caught_up()  # both applied, and the phone's binding in ClickHouse (the member page lists it)
    start = available(cw, m)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        cs = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        cs.goto(f"{cw.base_url}/console")
        cs.wait_for_selector("body[data-ready='1']")
        cs.fill("#login", "cs-li")
        cs.fill("#password", "not the password")
        cs.click("#sign-in")
        cs.wait_for_selector("#login-status.error")
        assert "wrong" in cs.inner_text("#login-status")
        cs.fill("#password", PASSWORD)
        cs.click("#sign-in")
        cs.wait_for_selector("body[data-role='customer_service']")
        assert cs.is_hidden("#nav button[data-tab='audit']"), "customer service does not read the audit trail"
        cs.screenshot(path=str(SHOTS / "console-login.png"))
        # Find the member by phone (through the pseudonym), adjust with a reason.
        cs.select_option("#search-kind", "phone")
        cs.fill("#search-q", phone)
        cs.click("#search-go")
        cs.wait_for_selector(f"#member[data-member='{m}']")
        assert int(cs.get_attribute("#m-available", "data-value") or -1) == start
        assert int(cs.get_attribute("#m-lots", "data-rows") or 0) >= 1
        assert int(cs.get_attribute("#m-bindings", "data-rows") or 0) >= 1
        cs.fill("#adj-points", "50")
        cs.fill("#adj-reason", "goodwill: parcel arrived late")
        cs.click("#adj-go")
        cs.wait_for_selector("#adj-status.ok")
        cs.wait_for_selector(f"#m-available[data-value='{start + 50}']")  # (the page's CSP forbids eval)
        assert available(cw, m) == start + 50
        cs.screenshot(path=str(SHOTS / "console-member.png"), full_page=True)
        # Above the threshold: it waits for a second operator.
        cs.fill("#adj-points", "20000")
        cs.fill("#adj-reason", "compensation for a lost booking")
        cs.click("#adj-go")
        cs.wait_for_selector("#adj-status.pending")
        assert "second operator" in cs.inner_text("#adj-status")
        approval_id = cs.get_attribute("#adj-status", "data-adjustment")
        assert available(cw, m) == start + 50
        cs.click("#nav button[data-tab='approvals']")
        cs.wait_for_selector(f"#approvals td:text('{approval_id}')")
        assert cs.locator(f"button.approve[data-id='{approval_id}']").count() == 0, "not by the one who asked"
        checker = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
        checker.goto(f"{cw.base_url}/console")
        checker.fill("#login", "cs-zhou")
        checker.fill("#password", PASSWORD)
        checker.click("#sign-in")
        checker.wait_for_selector("body[data-role='customer_service']")
        checker.click("#nav button[data-tab='approvals']")
        checker.click(f"button.approve[data-id='{approval_id}']")
        checker.wait_for_selector("#approvals-status.ok")
        checker.wait_for_selector("#approvals td.approved")  # the list asked again after the decision
        checker.screenshot(path=str(SHOTS / "console-approvals.png"), full_page=True)
        cw.wait_until(lambda: available(cw, m) == start + 20_050, timeout=30, what="the approved adjustment")
        # The auditor reads the trail: who, before and after.
        cw.wait_caught_up()
        aud = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
        aud.goto(f"{cw.base_url}/console")
        aud.fill("#login", "audit-sun")
        aud.fill("#password", PASSWORD)
        aud.click("#sign-in")
        aud.wait_for_selector("body[data-role='auditor']")
        aud.click("#nav button[data-tab='audit']")
        aud.fill("#au-member", m)
        aud.click("#au-go")
        aud.wait_for_selector("#audit tbody tr:nth-child(3)")
        actions = aud.eval_on_selector_all("#audit tbody tr", "rows => rows.map(r => r.dataset.action)")
        assert {"member.adjust", "member.adjust.requested", "member.adjust.approved"} <= set(actions)
        assert aud.is_hidden("#adjust-form"), "the auditor changes nothing"
        aud.screenshot(path=str(SHOTS / "console-audit.png"), full_page=True)
        browser.close()
    cw.wait_caught_up()
    rows = audit_rows(cw, member=m)
    adjust = next(r for r in rows if r["action"] == "member.adjust")
    assert adjust["operator"] == "cs-li" and adjust["role"] == "customer_service"
    assert adjust["before"] == {"available": start} and adjust["after"]["available"] == start + 50
    approved = next(r for r in rows if r["action"] == "member.adjust.approved")
    assert approved["operator"] == "cs-zhou" and approved["after"]["available"] == start + 20_050
    status, ledger = cw.get(f"/v1/members/{m}/ledger")
    assert status == 200
    assert sorted(r["points"] for r in ledger["rows"] if r["kind"] == "adjustment") == [50, 20_000]


def test_cli_operators_and_audit(cw: WorkerProcess) -> None:
    import subprocess
    import sys

    def loyalty(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "streams.cli", *args], input=stdin, env=cw.env,
                              capture_output=True, text=True, timeout=120, check=False)

    out = loyalty("operators", "add", "cs-cli", "--role", "customer_service", "--password-stdin",
                  stdin="a password from a script\n")
    assert out.returncode == 0 and "cs-cli" in out.stdout and "customer_service" in out.stdout, out
    assert Console(cw).login("cs-cli", "a password from a script")[0] == 200
    refused = loyalty("operators", "add", "bu-x", "--role", "bu_operator", "--password-stdin", stdin="long enough pw\n")
    assert refused.returncode != 0 and "needs their business unit" in refused.stderr, refused
    assert loyalty("operators", "reset-password", "cs-cli", "--password-stdin",
                   stdin="another password here\n").returncode == 0
    assert loyalty("operators", "disable", "cs-cli").returncode == 0
    listed = loyalty("operators", "list")
    assert listed.returncode == 0
    assert next(line for line in listed.stdout.splitlines() if line.startswith("cs-cli")).endswith("DISABLED")
    cw.wait_caught_up()
    trail = loyalty("audit", "--action", "operator.", "--operator", "admin-token")
    assert trail.returncode == 0, trail
    assert "operator.add" in trail.stdout and "operator.reset-password" in trail.stdout
    assert "operator.disable" in trail.stdout and "$argon2" not in trail.stdout
    assert "another password here" not in trail.stdout
    assert loyalty("audit", "--from", "2026-13-01").returncode != 0
    assert len(loyalty("operators", "session-key").stdout.strip()) == 44
