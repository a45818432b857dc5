"""The HTTP service, on the Faust worker's web server. Importing this package registers
every view: the ingress (callbacks.py), the member and till API (members.py),
engagement (engage.py), the gateways' notifications (gateways.py) and the operators' API
(admin.py); common.py is what they share."""

from streams.http import admin, callbacks, common, engage, gateways, members

__all__ = ["admin", "callbacks", "common", "engage", "gateways", "members"]
