"""The HTTP service, on the Faust worker's web server. Importing this package registers
every view: the ingress (callbacks.py), the member and till API (members.py),
engagement (engage.py), the gateways' notifications (gateways.py; WeChat Pay's business
circle: circle.py) and the operators' API (admin.py) and the console's accounts, audit
trail and member service (console.py, whose middleware checks every /v1/admin request),
rules published from the console (rules.py), coupons to an audience (audiences.py);
scheduled campaigns (campaigns.py); merging accounts (merges.py); erasing a member
(privacy.py); merchant staff's coupon redemptions (redemptions.py); the points mall
(mall.py); receipt points (receipts.py); members' events with sign-up (signups.py); the
API's OpenAPI document (openapi.py); common.py is what they share."""

from streams.http import (
    admin,
    audiences,
    callbacks,
    campaigns,
    circle,
    common,
    console,
    engage,
    gateways,
    mall,
    members,
    merges,
    openapi,
    privacy,
    receipts,
    redemptions,
    rules,
    signups,
)

__all__ = ["admin", "audiences", "callbacks", "campaigns", "circle", "common", "console", "engage", "gateways", "mall",
           "members", "merges", "openapi", "privacy", "receipts", "redemptions", "rules", "signups"]
