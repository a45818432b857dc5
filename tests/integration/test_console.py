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


def balance(w: WorkerProcess, member: str) -> int:
    status, body = w.get(f"/v1/members/{member}")
    return int(body["balance"]) if status == 200 else -1


def audit_rows(w: WorkerProcess, **query: str) -> list[dict[str, Any]]:
    from urllib.parse import urlencode

    return w.get("/v1/admin/audit?" + urlencode(query))[1]["rows"]  # type: ignore[no-any-return]


def signed_in(browser: Any, w: WorkerProcess, login: str, role: str, height: int = 900) -> Any:
    """A new browser page of the console, signed in as `login` (whose role is `role`)."""
    page = browser.new_context(viewport={"width": 1400, "height": height}).new_page()
    page.goto(f"{w.base_url}/console")
    page.fill("#login", login)
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    page.wait_for_selector(f"body[data-role='{role}']")
    return page


def launch(p: Any) -> Any:
    return p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"])


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
            .replace("{approval_id}", "a-none").replace("{login}", "nobody").replace("{send_id}", "s-none")
            .replace("{hold_id}", "h-none").replace("{coupon_id}", "c-none").replace("{merge_id}", "mg-none")
            .replace("{image}", "x.png").replace("{receipt_id}", "rc-none").replace("{decision}", "approve")
            .replace("{campaign}", "no-such").replace("{run}", "202601010000"))


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
    hold = orjson.dumps({"member_id": m, "points": 30, "ttl_seconds": 3600})
    hold_id = f"h-{uuid.uuid4().hex[:8]}"
    assert cw.post("/v1/holds", hold, cw.pos_headers(hold, **{"Idempotency-Key": hold_id}))[0] == 201
    cw.wait_caught_up()  # both applied, and the phone's binding in ClickHouse (the member page lists it)
    start = available(cw, m)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        cs = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        cs.on("dialog", lambda d: d.accept())  # the page asks before each member action
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
        checker = signed_in(browser, cw, "cs-zhou", "customer_service")
        checker.click("#nav button[data-tab='approvals']")
        checker.click(f"button.approve[data-id='{approval_id}']")
        checker.wait_for_selector("#approvals-status.ok")
        checker.wait_for_selector("#approvals td.approved")  # the list asked again after the decision
        checker.screenshot(path=str(SHOTS / "console-approvals.png"), full_page=True)
        cw.wait_until(lambda: available(cw, m) == start + 20_050, timeout=30, what="the approved adjustment")
        # The other member actions: cancel a hold, override the tier, re-send a coupon, unbind.
        cs.click("#nav button[data-tab='members']")
        cs.click("#search-go")
        cs.wait_for_selector(f"#member[data-member='{m}'] button.cancel-hold[data-id='{hold_id}']")
        cs.click(f"button.cancel-hold[data-id='{hold_id}']")
        cs.wait_for_selector(f"#m-available[data-value='{start + 20_080}']")
        cs.select_option("#tier-select", "gold")
        cs.fill("#tier-until", "2027-06-30")
        cs.click("#tier-go")
        cs.wait_for_selector("#action-status.ok:text('Tier gold')")
        assert cw.get(f"/v1/members/{m}")[1]["tier"] == "gold", cs.inner_text("#action-status")
        cs.click("#m-coupons button.resend")
        cs.wait_for_selector("#action-status.ok:text('sent again')")
        cw.wait_caught_up()  # the ledger rows of the adjustments in ClickHouse
        with cs.expect_download() as got:
            cs.click("#export-go")
        exported = orjson.loads(Path(got.value.path()).read_bytes())
        assert exported["member_id"] == m and exported["exported_by"] == "cs-li"
        assert sorted(r["points"] for r in exported["ledger"] if r["kind"] == "adjustment") == [50, 20_000]
        assert any(b["key"].startswith("id:phone:") for b in exported["bindings"]) and exported["coupons"]
        assert phone.encode() not in Path(got.value.path()).read_bytes(), "phones only as pseudonyms"
        cs.click("#m-bindings button.unbind")
        cs.wait_for_selector("#action-status:text('unbound'), #action-status.error")
        assert "error" not in (cs.get_attribute("#action-status", "class") or ""), cs.inner_text("#action-status")
        assert cw.get(f"/v1/admin/members/search?kind=phone&q={phone}")[1]["members"] == []
        # The auditor reads the trail: who, before and after.
        cw.wait_caught_up()
        aud = signed_in(browser, cw, "audit-sun", "auditor")
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
    assert {"member.hold-cancel", "member.tier-override", "member.coupon-resend", "member.unbind",
            "member.export"} <= {
        r["action"] for r in rows}
    tier = next(r for r in rows if r["action"] == "member.tier-override")
    assert tier["before"]["tier"] != "gold" and tier["after"]["tier"] == "gold"
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


def test_rules_checked_previewed_published_to_every_worker_and_rolled_back(
        worker_factory: Any, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from tests.integration.test_rules_in_motion import RULES, pay, write_rules

    rules_file = write_rules(tmp_path / "rules.toml", "motion-1", rate=1)
    w1: WorkerProcess = worker_factory("rules", LOYALTY_RULES=str(rules_file))
    w1.start()
    # The others apply payments but leave the ledger to w1 (one embedded ClickHouse holds the trail).
    accrual_only = {**w1.extra_env, "LOYALTY_ROLES": "accrual,notifier,parking"}
    second = WorkerProcess(run_id=w1.run_id, data_dir=tmp_path / "second", callback_secret=w1.callback_secret,
                           admin_token=w1.admin_token, extra_env=accrual_only)
    second.start()
    workers = [w1, second]
    try:
        add_operator(w1, "admin-rules", "group_admin")
        add_operator(w1, "bu-rules", "bu_operator", bu="mall")
        m = f"r-{uuid.uuid4().hex[:8]}"
        assert w1.send_callback(pay(m, 10_000))[0] == 202
        w1.wait_until(lambda: available(w1, m) == 150, timeout=60, what="the first payment (rate 1 + flash 50)")
        for w in workers:
            w.wait_caught_up()
        bu = Console(w1)
        assert bu.login("bu-rules")[0] == 200
        group_wide = RULES.replace("VERSION", "bu-try").replace("RATE", "5")
        status, body, _ = bu.call("POST", "/v1/admin/rules/publish", {"rules": group_wide, "why": "mine"})
        assert status == 403 and "group admin" in body["error"] and "formats" in body["outside"], body
        good = RULES.replace("VERSION", "motion-2").replace("RATE", "2")
        bad_lines = good.splitlines()
        bad_at = next(i for i, line in enumerate(bad_lines, 1) if line.startswith("per_fen"))
        bad_lines[bad_at - 1] = 'per_fen = "one hundred"'
        with sync_playwright() as p:
            browser = launch(p)
            page = signed_in(browser, w1, "admin-rules", "group_admin", 1100)
            page.click("#nav button[data-tab='rules']")
            page.wait_for_selector("#rules-current[data-number='1']")
            assert "motion-1" in page.input_value("#rules-text")
            # An error is shown at its line and field.
            page.fill("#rules-text", "\n".join(bad_lines))
            page.click("#rules-check")
            page.wait_for_selector("#rules-status.error")
            assert page.get_attribute("#rules-status", "data-line") == str(bad_at)
            assert "per_fen" in (page.get_attribute("#rules-status", "data-field") or "")
            # A valid edit's preview over the known history: 150 points now, 250 with rate 2.
            page.fill("#rules-text", good)
            page.fill("#rp-from", "2026-11-23")
            page.fill("#rp-to", "2026-11-23")
            page.click("#rules-check")
            page.wait_for_selector("#rules-preview tbody tr[data-bu='mall']")
            row = "#rules-preview tbody tr[data-bu='mall']"
            assert (page.get_attribute(row, "data-live"), page.get_attribute(row, "data-candidate")) == ("150", "250")
            assert page.get_attribute("#rules-affected", "data-affected") == "1"
            page.fill("#rules-why", "double points in the mall for December")
            page.click("#rules-publish")
            page.wait_for_selector("#rules-current[data-number='2']")
            page.screenshot(path=str(SHOTS / "console-rules.png"), full_page=True)
            for w in workers:  # every running worker applies the new version
                w.wait_until(lambda w=w: w.get("/healthz")[1]["rules_version"] == "motion-2", timeout=30,
                             what="motion-2 in force")
            assert w1.send_callback(pay(m, 10_000))[0] == 202
            w1.wait_until(lambda: available(w1, m) == 150 + 250, timeout=60, what="the payment under rate 2")
            # Roll back to version 1: a new version (#3) with its text.
            page.click("button.rollback[data-number='1']")
            page.wait_for_selector("#rules-current[data-number='3']")
            browser.close()
        for w in workers:
            w.wait_until(lambda w=w: w.get("/healthz")[1]["rules_version"] == "motion-1", timeout=30,
                         what="motion-1 in force again")
        assert w1.send_callback(pay(m, 10_000))[0] == 202
        w1.wait_until(lambda: available(w1, m) == 150 + 250 + 150, timeout=60, what="the payment under rate 1")
        # A worker started later applies the version in force, whatever its file says.
        second.stop()
        write_rules(rules_file, "motion-file", rate=7)
        later = WorkerProcess(run_id=w1.run_id, data_dir=tmp_path / "later", callback_secret=w1.callback_secret,
                              admin_token=w1.admin_token, extra_env=accrual_only)
        workers.append(later)
        later.start()
        assert later.get("/healthz")[1]["rules_version"] == "motion-1"
        status, rules = w1.get("/v1/admin/rules")
        assert [v["number"] for v in rules["versions"]] == [3, 2, 1]
        assert rules["versions"][0]["source"] == "rollback to #1" and rules["current"]["number"] == 3
        # The BU operator adds a campaign of their own BU alone: allowed.
        own = rules["current"]["text"] + '\n[[campaigns]]\nid = "mall-only"\nbus = ["mall"]\nbonus_points = 7\n'
        status, body, _ = bu.call("POST", "/v1/admin/rules/publish", {"rules": own, "why": "mall late opening"})
        assert status == 201 and body["number"] == 4, body
        # Merchants and their contracts as data: each edit a new version, applied at once.
        admin = Console(w1)
        assert admin.login("admin-rules")[0] == 200
        s9 = {"id": "s9", "bu": "mall", "category": "fashion", "points": 5, "per_fen": 100, "commission_bp": 300}
        status, body, _ = admin.call("POST", "/v1/admin/merchants", {"merchant": s9, "why": "new tenant, unit 9"})
        assert status == 201 and body["number"] == 5 and body["source"] == "merchant s9", body
        assert w1.send_callback(pay(m, 10_000, merchant_id="s9"))[0] == 202
        w1.wait_until(lambda: available(w1, m) == 150 + 250 + 150 + 500 + 50 + 7, timeout=60,
                      what="a payment at s9 earning the merchant's own rate (5 a yuan) + flash + mall-only")
        status, body, _ = bu.call("POST", "/v1/admin/merchants", {"merchant": {**s9, "commission_bp": 250},
                                                                  "why": "renegotiated"})
        assert status == 201, body
        status, body, _ = bu.call("POST", "/v1/admin/merchants", {"merchant": {**s9, "id": "x1", "bu": "other"},
                                                                  "why": "not mine"})
        assert status == 403 and "merchants[id=x1]" in body["outside"], body
        status, body, _ = admin.call("POST", "/v1/admin/merchants", {"merchant": {**s9, "id": "x2", "bu": "nowhere"},
                                                                     "why": "typo in the BU"})
        assert status == 400 and "business unit" in body["error"] and "bu" in body["field"], body
        listed = admin.call("GET", "/v1/admin/merchants")[1]["merchants"]
        assert next(x for x in listed if x["id"] == "s9")["commission_bp"] == 250
        with sync_playwright() as p:
            browser = launch(p)
            page = signed_in(browser, w1, "admin-rules", "group_admin", 600)
            page.click("#nav button[data-tab='merchants']")
            page.click("#merchants tr[data-merchant='s9'] button.edit-merchant")
            assert page.input_value("#mf-commission") == "250"
            page.fill("#mf-commission", "200")
            page.fill("#mf-why", "summer promotion for the tenant")
            page.click("#mf-save")
            page.wait_for_selector("#merchant-status.ok")
            page.screenshot(path=str(SHOTS / "console-merchants.png"), full_page=True)
            browser.close()
        w1.wait_caught_up()
        actions = [r["action"] for r in audit_rows(w1, operator="admin-rules")]
        assert "rules.publish" in actions and "rules.rollback" in actions and "merchants.edit" in actions
    finally:
        for w in workers[1:]:
            w.stop()
            w.cleanup()


def test_audience_send_issues_exactly_once_with_a_worker_killed_during_it(worker_factory: Any) -> None:
    w: WorkerProcess = worker_factory("audience", LOYALTY_AUDIENCE_SEND_RATE="250")
    w.start()
    members = [f"au-{i:04d}" for i in range(1_000)]
    token = {"Authorization": f"Bearer {w.admin_token}"}

    async def register_all() -> None:
        bodies = [orjson.dumps({"event_id": f"reg-{m}", "type": "register", "occurred_at": now_iso(), "member_id": m,
                                "tags": ["vip"] if i % 2 else []}) for i, m in enumerate(members)]
        from devtools.workers import post_signed_many

        got = await post_signed_many(w, [("/v1/callbacks/member", orjson.loads(b), f"k{i}")
                                         for i, b in enumerate(bodies)], partner=True)
        assert {s for s, _ in got} == {202}

    import asyncio

    asyncio.run(register_all())
    w.wait_until(lambda: w.metrics()["events_applied_total"] >= len(members), timeout=120, what="registrations")
    w.wait_caught_up()  # their states in ClickHouse (an audience is evaluated there)

    def preview_of(audience: dict[str, Any]) -> dict[str, Any]:
        status, got = w.post("/v1/admin/audiences/preview", orjson.dumps({"audience": audience}), token)
        assert status == 200, got
        return got  # type: ignore[no-any-return]

    # (the last rows may still be between the topic and ClickHouse for a moment)
    w.wait_until(lambda: preview_of({})["count"] == len(members), timeout=30, what="every member's state stored")
    preview = preview_of({"tags": ["vip"]})
    assert preview["count"] == 500 and all(m in members[1::2] for m in preview["sample"])
    status, bad = w.post("/v1/admin/audiences/preview", orjson.dumps({"audience": {"tiers": "gold"}}), token)
    assert status == 400 and bad["field"] == "audience.tiers"
    send = {"send_id": "xmas-1", "template": "pct-10", "audience": {}}
    status, started = w.post("/v1/admin/audiences/send", orjson.dumps(send), token)
    assert status == 202 and started["total"] == len(members), started
    # SIGKILL while the send is half way (250 members a second: about 4 s in all).
    w.wait_until(lambda: 200 <= w.get("/v1/admin/audiences/sends/xmas-1")[1]["done"] < len(members), timeout=30,
                 what="the send half way")
    w.kill()
    w.start()
    status, again = w.post("/v1/admin/audiences/send", orjson.dumps(send), token)
    assert status == 200 and again["send_id"] == "xmas-1", "a retry of the send answers it as it stands"
    w.wait_until(lambda: w.get("/v1/admin/audiences/sends/xmas-1")[1]["status"] == "sent", timeout=120,
                 what="the send taken up again by the leader and finished")
    w.wait_caught_up()
    progress = w.get("/v1/admin/audiences/sends/xmas-1")[1]
    assert (progress["issued"], progress["issued_members"]) == (len(members), len(members)), progress
    for m in members[::97]:
        wallet = w.get(f"/v1/members/{m}/coupons")[1]["coupons"]
        assert [c["trigger"] for c in wallet].count("audience:xmas-1") == 1, (m, wallet)
    assert w.metrics()["audience_grants_sent_total"] >= 1
    # The console's audience tab counts the same audience.
    from playwright.sync_api import sync_playwright

    add_operator(w, "admin-aud", "group_admin")
    with sync_playwright() as p:
        browser = launch(p)
        page = signed_in(browser, w, "admin-aud", "group_admin", 700)
        page.click("#nav button[data-tab='audiences']")
        page.fill("#aud-tags", "vip")
        page.click("#aud-preview")
        page.wait_for_selector("#aud-status[data-count='500']")
        page.select_option("#send-template", "hotel-coffee")
        page.click("#send-go")
        page.wait_for_selector("#send-status.ok", timeout=60_000)
        page.screenshot(path=str(SHOTS / "console-audiences.png"), full_page=True)
        browser.close()


def test_an_approval_taking_more_than_available_is_refused_and_stays_pending(cw: WorkerProcess) -> None:
    m = f"n-{uuid.uuid4().hex[:8]}"
    member_event(cw, {"event_id": f"reg-{m}", "type": "register", "occurred_at": now_iso(), "member_id": m})
    cw.wait_until(lambda: available(cw, m) >= 0, timeout=60, what="registered")
    maker, checker = Console(cw), Console(cw)
    assert maker.login("cs-li")[0] == 200 and checker.login("cs-zhou")[0] == 200
    adj = {"adjustment_id": f"neg-{uuid.uuid4().hex[:8]}", "points": -20_000, "reason": "duplicate account clean-up"}
    status, pending, _ = maker.call("POST", f"/v1/admin/members/{m}/adjustments", adj)
    assert status == 202 and pending["status"] == "pending", pending
    path = f"/v1/admin/approvals/{adj['adjustment_id']}"
    status, body, _ = checker.call("POST", f"{path}/approve")
    assert status == 409 and body["available"] == available(cw, m), body
    listed = {a["approval_id"]: a for a in checker.call("GET", "/v1/admin/approvals")[1]["approvals"]}
    assert listed[adj["adjustment_id"]]["status"] == "pending"
    status, body, _ = checker.call("POST", f"{path}/reject")
    assert status == 200 and body["status"] == "rejected" and body["decided_by"] == "cs-zhou"
    assert checker.call("POST", f"{path}/approve")[1]["status"] == "rejected", "decided once"


def test_accounts_merged_in_the_browser_then_undone(cw: WorkerProcess) -> None:
    """Customer service merges a person's second account into the first from the member
    page: points (lots with their months), tier, coupons, the openid and the plate move;
    the merged id answers as an alias (its later payment earns on the account kept, a
    refund of its earlier payment claws back there); asking again changes nothing; a
    customer service operator may not undo, a group admin may; the books stay equal."""
    from playwright.sync_api import sync_playwright

    keep, gone = f"mk-{uuid.uuid4().hex[:8]}", f"mg-{uuid.uuid4().hex[:8]}"
    openid, plate = f"o-{uuid.uuid4().hex[:10]}", "沪M" + uuid.uuid4().hex[:5].upper()
    member_event(cw, {"event_id": f"reg-{gone}", "type": "register", "occurred_at": now_iso(), "member_id": gone,
                      "external_ids": [{"kind": "wechat", "id": openid}]})
    member_event(cw, {"event_id": f"reg-{keep}", "type": "register", "occurred_at": now_iso(), "member_id": keep})
    first = {"event_id": f"p-{uuid.uuid4().hex[:12]}", "type": "payment", "occurred_at": now_iso(), "member_id": gone,
             "bu_id": "sh-mall", "merchant_id": "sh-mall-shop-01", "category": "fashion", "amount_fen": 88_800,
             "channel": "wechat"}
    assert cw.send_callback(first)[0] == 202
    second = {**first, "event_id": f"p-{uuid.uuid4().hex[:12]}", "merchant_id": "sh-mall-shop-02", "amount_fen": 12_300}
    assert cw.send_callback(second)[0] == 202
    pay(cw, keep, "sh-mall", "sh-mall-shop-01", 5_000)
    body = orjson.dumps({"plate": plate, "auto_pay": True})
    assert cw.post(f"/v1/members/{gone}/plates", body, cw.pos_headers(body))[0] == 200
    cw.wait_caught_up()
    a_gone, a_keep = balance(cw, gone), balance(cw, keep)
    assert a_gone > 0 and a_keep > 0
    second_points = next(r["points"] for r in cw.get(f"/v1/members/{gone}/ledger")[1]["rows"]
                         if r["event_id"] == second["event_id"])
    cs = Console(cw)
    assert cs.login("cs-li")[0] == 200
    # A merge into itself, or into an account that does not exist, is refused.
    assert cs.call("POST", f"/v1/admin/members/{gone}/merge", {"into": gone, "reason": "same"})[0] == 400
    assert cs.call("POST", f"/v1/admin/members/{gone}/merge", {"into": "nobody-x", "reason": "same person"})[0] == 404

    with sync_playwright() as p:
        browser = launch(p)
        page = signed_in(browser, cw, "cs-li", "customer_service", height=1200)
        page.on("dialog", lambda d: d.accept())
        page.fill("#search-q", gone)
        page.click("#search-form button[type=submit]")
        page.wait_for_selector(f"#member[data-member='{gone}']")
        page.fill("#merge-into", keep)
        page.fill("#merge-reason", "one person, two phone numbers")
        page.click("#merge-go")
        page.wait_for_selector("#merge-status:text('Merged into')", timeout=60_000)
        page.wait_for_selector(f"#merge-info p.merge-line:text('Merged into {keep}')")
        assert page.is_hidden("#merge-box"), "a merged account is not merged again"
        assert page.query_selector("button.undo-merge") is None, "customer service may not undo"
        page.screenshot(path=str(SHOTS / "console-merge.png"), full_page=True)
        browser.close()

    status, merged, _ = cs.call("POST", f"/v1/admin/members/{gone}/merge", {"into": keep, "reason": "asked twice"})
    assert status == 200 and merged["status"] == "merged", merged
    merge_id = merged["merge_id"]
    assert merged["points"] == a_gone and merged["by"] == "cs-li"
    assert set(merged["moved"]) == {f"id:wechat:{openid}", f"plate:{plate}"}
    assert balance(cw, gone) == a_gone + a_keep, "the merged id answers for the account kept"
    assert cw.get(f"/v1/members/{gone}")[1]["merged_from"] == gone
    assert balance(cw, keep) == a_gone + a_keep
    assert cw.get(f"/v1/admin/members/search?kind=wechat&q={openid}")[1]["members"] == [keep]
    # Till writes naming the merged id are the account kept's to take (409).
    for path, req in (("/v1/holds", {"member_id": gone, "points": 10}), (f"/v1/members/{gone}/plates",
                                                                         {"plate": "沪Z99999"})):
        body = orjson.dumps(req)
        status, answer = cw.post(path, body, {**cw.pos_headers(body), "Idempotency-Key": uuid.uuid4().hex[:12]})
        assert status == 409 and answer["merged_into"] == keep, (path, answer)
    view = cs.call("GET", f"/v1/admin/members/{keep}/overview")[1]
    assert [x["from"] for x in view["merges_in"]] == [gone]
    # The account kept lost from Redis and rebuilt: the merge's state and the records that
    # came with it are restored from the durable facts.
    cw.wait_caught_up()
    redis_client(cw.redis_url).delete(f"{cw.run_id}:m:{{{keep}}}", f"{cw.run_id}:ev:{{{keep}}}")
    status, rebuilt = cw.post("/v1/admin/rebuild", orjson.dumps({"offset": 0, "limit": 10_000}),
                              {"Authorization": f"Bearer {cw.admin_token}"})
    assert status == 200, rebuilt
    assert balance(cw, keep) == a_gone + a_keep
    # A refund of the merged id's payment from before the merge claws back on the account
    # kept (its record came along); that payment sent again is a duplicate.
    refund = {**second, "event_id": f"r-{uuid.uuid4().hex[:10]}", "type": "refund", "refund_of": second["event_id"],
              "occurred_at": now_iso()}
    assert cw.send_callback(refund)[0] == 202
    assert cw.send_callback(first)[0] == 202
    cw.wait_caught_up()
    assert balance(cw, keep) == a_gone + a_keep - second_points
    rec = cw.get("/v1/admin/reconcile")[1]
    assert rec["clean"], rec
    # Undo: not customer service's; a group admin's, within the window, once the account
    # kept has the points the merge brought.
    assert cs.call("POST", f"/v1/admin/merges/{merge_id}/undo", {"reason": "wrong person"})[0] == 403
    admin = Console(cw)
    assert admin.login("admin-wang")[0] == 200
    status, refused, _ = admin.call("POST", f"/v1/admin/merges/{merge_id}/undo", {"reason": "two people after all"})
    assert status == 409 and refused["undo_refused"]["field"] == "points", refused
    assert balance(cw, keep) == a_gone + a_keep - second_points, "a refused undo changes nothing"
    # The merged id's later payment earns on the account kept.
    later = {**first, "event_id": f"p-{uuid.uuid4().hex[:12]}", "amount_fen": 300_000, "occurred_at": now_iso()}
    assert cw.send_callback(later)[0] == 202
    cw.wait_caught_up()
    earned = next(r["points"] for r in cw.get(f"/v1/members/{keep}/ledger")[1]["rows"]
                  if r["event_id"] == later["event_id"])
    after_pay = balance(cw, keep)
    assert after_pay == a_gone + a_keep - second_points + earned
    status, undone, _ = admin.call("POST", f"/v1/admin/merges/{merge_id}/undo", {"reason": "two people after all"})
    assert status == 200 and undone["status"] == "undone", undone
    assert undone["points_back"] == a_gone
    assert admin.call("POST", f"/v1/admin/merges/{merge_id}/undo", {"reason": "again"})[1]["status"] == "undone"
    assert balance(cw, gone) == a_gone and balance(cw, keep) == after_pay - a_gone
    assert cw.get(f"/v1/admin/members/search?kind=wechat&q={openid}")[1]["members"] == [gone]
    assert "merged_from" not in cw.get(f"/v1/members/{gone}")[1]
    cw.wait_caught_up()
    rec = cw.get("/v1/admin/reconcile")[1]
    assert rec["clean"], rec
    actions = {r["action"]: r for r in audit_rows(cw, member=gone)}
    assert actions["member.merge"]["operator"] == "cs-li" and actions["member.merge"]["target"] == keep
    assert actions["member.merge"]["before"]["from_balance"] == a_gone
    assert actions["member.merge-undo"]["operator"] == "admin-wang"


def test_merchant_staff_redeem_coupons_at_their_own_merchant_in_the_browser(cw: WorkerProcess) -> None:
    """Merchant staff redeem a member's coupon from the console at their own merchant (the
    merchant, BU and category from their scope and the rules, not the request), see it in
    their list; the coupon is used once; another merchant's list or a redemption elsewhere is
    refused; a BU operator may not redeem; the audit trail has who."""
    from playwright.sync_api import sync_playwright

    m = f"rd-{uuid.uuid4().hex[:8]}"
    member_event(cw, {"event_id": f"reg-{uuid.uuid4().hex[:10]}", "type": "register", "occurred_at": now_iso(),
                      "member_id": m})
    cw.wait_caught_up()
    coupon = next(c for c in cw.get(f"/v1/members/{m}/coupons")[1]["coupons"]
                  if c["template"] == "welcome-20" and c["status"] == "active")["coupon_id"]
    with sync_playwright() as p:
        browser = launch(p)
        page = signed_in(browser, cw, "shop-qian", "merchant_staff")
        page.click("#nav button[data-tab='coupons']")
        assert page.is_hidden("#rd-merchant"), "merchant staff redeem at their own merchant only"
        page.fill("#rd-member", m)
        page.fill("#rd-coupon", coupon)
        page.fill("#rd-amount", "150")
        page.click("#rd-go")
        page.wait_for_selector("#redeem-status:text('Redeemed'), #redeem-status.error")
        assert "20.00 yuan off" in page.inner_text("#redeem-status"), page.inner_text("#redeem-status")
        cw.wait_caught_up()  # the redemption's row in ClickHouse
        page.click("#nav button[data-tab='coupons']")
        page.wait_for_selector(f"#redemptions tbody tr:has-text('{coupon}'), #redemptions-total.error")
        assert coupon in page.inner_text("#redemptions"), page.inner_text("#redemptions-total")
        page.screenshot(path=str(SHOTS / "console-coupons.png"), full_page=True)
        browser.close()
    assert next(c for c in cw.get(f"/v1/members/{m}/coupons")[1]["coupons"] if c["coupon_id"] == coupon)["status"] \
        == "used"
    shop = Console(cw)
    assert shop.login("shop-qian")[0] == 200
    again = shop.call("POST", "/v1/admin/coupons/redeem", {"member_id": m, "coupon_id": coupon, "payment_id": "p-x2",
                                                          "amount_fen": 15_000})
    assert again[0] == 409 and "used" in again[1]["error"], again
    elsewhere = shop.call("POST", "/v1/admin/coupons/redeem", {"member_id": m, "coupon_id": coupon, "amount_fen": 1,
                                                              "payment_id": "p-x3", "merchant_id": "sh-mall-shop-02"})
    assert elsewhere[0] == 403
    assert shop.call("GET", "/v1/admin/coupons/redemptions?merchant=sh-mall-shop-02")[0] == 403
    mine = shop.call("GET", "/v1/admin/coupons/redemptions")[1]
    assert [r["coupon_id"] for r in mine["redemptions"] if r["member_id"] == m] == [coupon]
    assert mine["discount_fen"] >= 2000
    bu = Console(cw)
    assert bu.login("bu-zhao")[0] == 200
    assert bu.call("POST", "/v1/admin/coupons/redeem", {"member_id": m, "coupon_id": coupon, "payment_id": "p-x4",
                                                       "amount_fen": 1, "merchant_id": "sh-mall-shop-01"})[0] == 403
    row = next(r for r in audit_rows(cw, member=m) if r["action"] == "coupon.redeem")
    assert row["operator"] == "shop-qian" and row["target"] == coupon


def named_in_redis(w: WorkerProcess, texts: list[str]) -> list[tuple[str, list[str]]]:
    """The keys of the worker's namespace whose name or value holds one of `texts`, with
    the texts found (strings, hashes, sorted sets, lists and sets are read whole)."""
    r = redis_client(w.redis_url)
    out = []
    for key in r.scan_iter(match=f"{w.run_id}:*", count=1000):
        k = key.decode() if isinstance(key, bytes) else key
        kind = r.type(k)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        value = (r.get(k) if kind == "string" else
                 orjson.dumps({str(a): str(b) for a, b in r.hgetall(k).items()}) if kind == "hash" else
                 orjson.dumps([str(x) for x in r.zrange(k, 0, -1)]) if kind == "zset" else
                 orjson.dumps([str(x) for x in r.lrange(k, 0, -1)]) if kind == "list" else
                 orjson.dumps(sorted(str(x) for x in r.smembers(k))) if kind == "set" else b"")
        text = k + (value.decode(errors="replace") if isinstance(value, bytes) else str(value or ""))
        if found := [t for t in texts if t in text]:
            out.append((k, found))
    return out


def test_a_member_erased_everywhere_while_the_books_keep_the_amounts(cw: WorkerProcess) -> None:
    """PIPL erasure: a group admin (not customer service) erases a member with a phone, an
    openid, a plate, a profile, payments, an inviter and audit rows; asked again it answers
    the same. Then no Redis key or value and no ClickHouse row names the member, the phone's
    pseudonym, the openid or the plate; the ledger keeps the amounts under a pseudonym (the
    forfeited balance its last row) and reconcile is clean."""
    import random
    import subprocess
    import sys

    from streams.auth import pseudonym
    from tests.integration.test_receipts import png, submit, upload
    from tests.integration.test_security import DUMP_STORE

    m, inviter = f"er-{uuid.uuid4().hex[:8]}", f"inv-{uuid.uuid4().hex[:8]}"
    phone = "139" + "".join(random.choice("0123456789") for _ in range(8))
    openid, plate = f"o-er-{uuid.uuid4().hex[:10]}", "沪E" + uuid.uuid4().hex[:5].upper()
    member_event(cw, {"event_id": f"reg-{inviter}", "type": "register", "occurred_at": now_iso(),
                      "member_id": inviter})
    member_event(cw, {"event_id": f"reg-{m}", "type": "register", "occurred_at": now_iso(), "member_id": m,
                      "birthday": "1990-05-06", "tags": ["vip"], "referred_by": inviter,
                      "external_ids": [{"kind": "phone", "id": phone}, {"kind": "wechat", "id": openid}]})
    pay(cw, m, "sh-mall", "sh-mall-shop-01", 45_600)
    body = orjson.dumps({"plate": plate, "auto_pay": False})
    assert cw.post(f"/v1/members/{m}/plates", body, cw.pos_headers(body))[0] == 200
    # What Redis keeps outside the member's own keys: the car inside the car park, a refund
    # held for a payment that never came, a receipt claimed for review (event ids that do
    # not embed the member id: the engine's own do, and an erasure rewrites those).
    tag = uuid.uuid4().hex[:10]
    body = orjson.dumps({"event_id": f"in-{tag}", "type": "entry", "occurred_at": now_iso(), "plate": plate,
                         "car_park": "sh-park", "gate": "g1"})
    assert cw.post("/v1/callbacks/parking", body, signed_headers(cw.callback_secret, body))[0] == 202
    refund = {"event_id": f"r-{tag}", "type": "refund", "occurred_at": now_iso(), "member_id": m, "bu_id": "sh-mall",
              "merchant_id": "sh-mall-shop-01", "category": "fashion", "amount_fen": 1_000, "channel": "wechat",
              "refund_of": f"p-never-{tag}"}
    assert cw.send_callback(refund)[0] == 202
    status, image = upload(cw, png(7))
    assert status == 201, image
    status, receipt = submit(cw, m, "sh-mall-shop-01", f"no-{tag}", 8_800, image["image"])
    assert status < 300 and receipt["status"] == "pending", receipt
    cw.wait_until(lambda: redis_client(cw.redis_url).exists(f"{cw.run_id}:park:sh-park:{plate}"), timeout=30,
                  what="the car inside")
    cw.wait_until(lambda: any(e["member_id"] == m for e in cw.get("/v1/admin/held?limit=1000")[1]["held"]),
                  timeout=30, what="the refund held")
    cs = Console(cw)
    assert cs.login("cs-li")[0] == 200
    assert cs.call("POST", f"/v1/admin/members/{m}/tier", {"tier": "gold"})[0] < 300  # an audit row about m
    cw.wait_caught_up()
    forfeited = balance(cw, m)
    assert forfeited > 0
    referral = [r for r in cw.get(f"/v1/members/{inviter}/ledger")[1]["rows"] if r["kind"] == "referral"]
    assert referral and m in orjson.dumps(referral).decode(), "the inviter's reward names the member"

    asked = {"reason": "PIPL request by the member", "confirm": m}
    assert cs.call("POST", f"/v1/admin/members/{m}/erase", asked)[0] == 403, "not customer service's"
    admin = Console(cw)
    assert admin.login("admin-wang")[0] == 200
    assert admin.call("POST", f"/v1/admin/members/{m}/erase", {**asked, "confirm": "someone"})[0] == 400
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        page = signed_in(browser, cw, "admin-wang", "group_admin")
        answers = iter([m, "PIPL request by the member"])
        page.on("dialog", lambda d: d.accept(next(answers)) if d.type == "prompt" else d.accept())
        page.fill("#search-q", m)
        page.click("#search-form button[type=submit]")
        page.wait_for_selector(f"#member[data-member='{m}']")
        page.click("#erase-go")
        page.wait_for_selector("#search-status:text('Erased')", timeout=90_000)
        page.screenshot(path=str(SHOTS / "console-erase.png"), full_page=True)
        browser.close()
    status, erased, _ = admin.call("POST", f"/v1/admin/members/{m}/erase", asked)
    assert status == 200 and erased["status"] == "erased", erased
    alias = erased["pseudonym"]
    assert alias.startswith("erased-") and m not in orjson.dumps(erased).decode()
    assert erased["by"] == "admin-wang" and erased["accounts"] == 1, "asked again: the erasure made in the browser"
    assert cw.get(f"/v1/members/{m}")[0] == 404
    assert cw.get(f"/v1/admin/members/search?kind=phone&q={phone}")[1]["members"] == []
    assert cw.get(f"/v1/admin/members/search?kind=wechat&q={openid}")[1]["members"] == []
    cw.wait_caught_up()
    rec = cw.get("/v1/admin/reconcile")[1]
    assert rec["clean"], rec
    rows = cw.get(f"/v1/members/{alias}/ledger")[1]["rows"]
    assert sum(r["points"] for r in rows) == 0 and rows[0]["kind"] == "erase" and rows[0]["points"] == -forfeited
    trail = audit_rows(cw, member=alias)
    assert [r["operator"] for r in trail if r["action"] == "member.erase"][:1] == ["admin-wang"]
    assert audit_rows(cw, member=m) == []
    assert not any(e["member_id"] == m for e in cw.get("/v1/admin/held?limit=1000")[1]["held"])
    claim = redis_client(cw.redis_url).get(f"{cw.run_id}:receipt:{receipt['receipt_id']}")
    assert (claim.decode() if isinstance(claim, bytes) else claim) == alias, "the receipt stays claimed, by the alias"

    secrets_of_m = [m, pseudonym(cw.pii_key, phone), phone, openid, plate]
    assert not named_in_redis(cw, secrets_of_m)
    cw.stop()  # the embedded store belongs to the worker: read it after it stopped
    try:
        dump = subprocess.run([sys.executable, "-c", DUMP_STORE, f"chdb://{cw.data_dir / 'chdb'}"],
                              capture_output=True, text=True, check=True, timeout=120).stdout
    finally:
        cw.start()
    left = {s: [line[:160] for line in dump.splitlines() if s in line][:3] for s in secrets_of_m}
    assert not any(left.values()), left
    assert alias in dump, "the amounts stay, under the pseudonym"


def test_an_erasure_whose_worker_died_after_clickhouse_finishes_from_what_it_found(worker_factory: Any,
                                                                                  tmp_path: Path) -> None:
    """The worker dies right after ClickHouse was erased (a fault injected): ClickHouse no
    longer says which ids, plates and parking sessions were the member's, so the erasure,
    asked again, takes up what it found before that step (kept in its record while it is
    erasing) and no Redis key or value names the member, its phone, openid or plate."""
    from streams.auth import pseudonym

    faults = tmp_path / "faults"
    faults.mkdir()
    w: WorkerProcess = worker_factory("erase-kill", LOYALTY_FAULTS_DIR=str(faults))
    w.start()
    add_operator(w, "admin-wang", "group_admin")
    tag = uuid.uuid4().hex[:8]
    m, phone, openid, plate = f"ek-{tag}", f"138{int(tag, 16) % 10**8:08d}", f"o-ek-{tag}", "沪K" + tag[:5].upper()
    member_event(w, {"event_id": f"reg-{tag}", "type": "register", "occurred_at": now_iso(), "member_id": m,
                     "external_ids": [{"kind": "phone", "id": phone}, {"kind": "wechat", "id": openid}]})
    pay(w, m, "sh-mall", "sh-mall-shop-01", 12_300)
    body = orjson.dumps({"plate": plate, "auto_pay": False})
    assert w.post(f"/v1/members/{m}/plates", body, w.pos_headers(body))[0] == 200
    body = orjson.dumps({"event_id": f"in-{tag}", "type": "entry", "occurred_at": now_iso(), "plate": plate,
                         "car_park": "sh-park", "gate": "g1"})
    assert w.post("/v1/callbacks/parking", body, signed_headers(w.callback_secret, body))[0] == 202
    w.wait_caught_up()
    secrets_of_m = [m, pseudonym(w.pii_key, phone), phone, openid, plate]
    before = {t for _, found in named_in_redis(w, secrets_of_m) for t in found}
    assert before == set(secrets_of_m) - {phone}, "each is in Redis before (the phone only as its pseudonym)"

    admin = Console(w)
    assert admin.login("admin-wang")[0] == 200
    asked = {"reason": "PIPL request by the member", "confirm": m}
    (faults / "erasure-die-after-clickhouse").touch()
    with pytest.raises(OSError):  # the worker died answering
        admin.call("POST", f"/v1/admin/members/{m}/erase", asked)
    assert w.proc is not None and w.proc.wait(30) == 137
    assert not (faults / "erasure-die-after-clickhouse").exists()
    assert named_in_redis(w, secrets_of_m), "Redis not erased yet: the worker died before"
    w.start()
    admin = Console(w)
    assert admin.login("admin-wang")[0] == 200
    status, erased, _ = admin.call("POST", f"/v1/admin/members/{m}/erase", asked)
    assert status == 200 and erased["status"] == "erased" and "found" not in erased, erased
    assert m not in orjson.dumps(erased).decode()
    assert named_in_redis(w, secrets_of_m) == []
    assert w.get(f"/v1/members/{m}")[0] == 404
    assert w.get(f"/v1/admin/members/search?kind=wechat&q={openid}")[1]["members"] == []
