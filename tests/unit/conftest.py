"""Fixtures shared by the unit tests of the payment gateways (ordinary notifications and
the WeChat Pay business circle): the simulator and the platform keys it signs with."""

from __future__ import annotations

import pytest

from devtools.gateways import WeChatPaySimulator
from streams.gateways import wechatpay


@pytest.fixture(scope="module")
def wx() -> WeChatPaySimulator:
    return WeChatPaySimulator()


@pytest.fixture(scope="module")
def wx_keys(wx: WeChatPaySimulator, tmp_path_factory: pytest.TempPathFactory) -> wechatpay.WeChatPayKeys:
    """Our verifier's keys, configured from the simulator's environment as a deployment would be."""
    env = wx.env(tmp_path_factory.mktemp("keys"))
    keys = wechatpay.WeChatPayKeys.from_settings(env["LOYALTY_WECHATPAY_APIV3_KEY"],
                                                 env["LOYALTY_WECHATPAY_PLATFORM_KEYS"])
    assert keys is not None
    return keys
