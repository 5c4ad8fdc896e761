"""Every field in the right shape (issue 26): times and counts sent as strings, the
fields kept in ``attrs``, guests, items with no user, the page as its own user, and
Instagram's items mapped like their Messenger counterparts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deploy.simulator.webhooks import INSTAGRAM_KINDS, WebhookSender
from producers.webhook.fields import ms
from producers.webhook.mapping import NO_PSID_PREFIX, ItemDefectError, map_item
from schemas.envelope import Envelope

PAGE = "104837261951234"
ACCOUNT = "17841405822304914"
USER = "6354927318804471"
T = 1764840050011


def route(ts: Any = T, sender: Any = None, recipient: Any = None) -> dict[str, Any]:
    return {
        "sender": {"id": USER} if sender is None else sender,
        "recipient": {"id": PAGE} if recipient is None else recipient,
        "timestamp": ts,
    }


def one(item: dict[str, Any], page: str = PAGE, platform: Any = "messenger") -> Envelope:
    env = map_item(page, None, item, "messaging", platform)
    # Every envelope reads back with the envelope's full validation, to the same bytes.
    assert Envelope.from_bytes(env.to_bytes()).to_bytes() == env.to_bytes()
    return env


# -- times -------------------------------------------------------------------------------


@given(st.integers(10**11, 2**53 - 1))
def test_a_time_in_ms_as_digits_is_that_time(t: int) -> None:
    assert ms(str(t)) == t == ms(t)


@given(st.integers(10**9, 10**11 - 1))
def test_a_time_in_seconds_as_digits_is_that_time_in_ms(s: int) -> None:
    assert ms(str(s)) == s * 1000


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)))
def test_an_iso_time_is_that_time(when: datetime) -> None:
    aware = when.replace(tzinfo=UTC)
    expected = (aware - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    assert ms(aware.isoformat()) == expected
    assert ms(when.isoformat()) == expected  # no zone: UTC
    assert ms(aware.isoformat().replace("+00:00", "Z")) == expected


@pytest.mark.parametrize("bad", ["", "soon", "-5", "1e12", "12:00", None, 1.5, [], -1, 2**53])
def test_an_unreadable_time_is_none_never_zero(bad: Any) -> None:
    assert ms(bad) is None


@pytest.mark.parametrize(
    "sent", [str(T), str(T // 1000 * 1000), str(T // 1000), "2025-12-04T09:20:50.011Z"]
)
def test_an_item_with_a_string_timestamp_keeps_its_time(sent: str) -> None:
    item = {**route(sent), "referral": {"ref": "r", "source": "SHORTLINK", "type": "OPEN"}}
    env = one(item)
    assert env.occurred_at == ms(sent)
    assert env.occurred_at > 10**12
    as_int = one({**item, "timestamp": ms(sent)})
    assert env.event_id == as_int.event_id


def test_a_string_watermark_is_read() -> None:
    env = one({**route(), "read": {"watermark": str(T - 5)}})
    assert (env.kind, env.watermark) == ("read", T - 5)


def test_num_edit_as_a_string_is_the_same_edit() -> None:
    body = {"mid": "m_1", "text": "fixed", "num_edit": 2}
    as_int = one({**route(), "message_edit": body})
    as_str = one({**route(), "message_edit": {**body, "num_edit": "2"}})
    assert as_str.attrs["num_edit"] == 2
    assert as_str.event_id == as_int.event_id
    assert one({**route(), "message_edit": {**body, "num_edit": "3"}}).event_id != as_int.event_id


# -- attrs -------------------------------------------------------------------------------


def test_a_delivery_with_a_singular_mid_keeps_it() -> None:
    env = one({**route(None), "delivery": {"mid": "m_one", "watermark": T}})
    assert env.attrs["mids"] == ["m_one"]


def test_location_template_fallback_url_are_in_attrs() -> None:
    location = {"type": "location", "payload": {"coordinates": {"lat": 48.8584, "long": 2.2945}}}
    template = {
        "template_type": "button",
        "text": "Pick one",
        "buttons": [{"type": "postback", "title": "Buy", "payload": "BUY"}],
    }
    fallback = {"type": "fallback", "title": "A link", "URL": "https://example.com/x"}
    message = {"mid": "m_a", "attachments": [location, fallback]}
    env = one({**route(), "message": message})
    found = env.attrs["attachments"]
    assert found[0]["coordinates"] == {"lat": 48.8584, "long": 2.2945}
    assert found[1]["url"] == "https://example.com/x"
    echo = {
        "mid": "m_e",
        "is_echo": True,
        "attachments": [{"type": "template", "payload": template}],
    }
    sent = one({**route(sender={"id": PAGE}, recipient={"id": USER}), "message": echo})
    assert sent.attrs["attachments"][0]["template"] == template


def test_referral_ads_context_and_origin_domain_are_in_attrs() -> None:
    ads = {"ad_title": "Sale", "photo_url": "https://x/p.jpg", "post_id": "1_2"}
    referral = {
        "ref": "r",
        "source": "ADS",
        "type": "OPEN_THREAD",
        "ad_id": "9",
        "ads_context_data": ads,
    }
    assert one({**route(), "referral": referral}).attrs["ads_context_data"] == ads
    plugin = {"source": "CUSTOMER_CHAT_PLUGIN", "type": "OPEN_THREAD", "origin_domain": "ex.com"}
    assert one({**route(), "referral": plugin}).attrs["origin_domain"] == "ex.com"
    message = {"mid": "m_ad", "text": "hi", "referral": referral}
    assert one({**route(), "message": message}).attrs["referral"]["ads_context_data"] == ads


@pytest.mark.parametrize(
    ("status", "opted_in"), [("RESUME_NOTIFICATIONS", True), ("STOP_NOTIFICATIONS", False)]
)
def test_notification_messages_opt_in_and_out_are_in_attrs(status: str, opted_in: bool) -> None:
    optin = {
        "type": "notification_messages",
        "payload": "DEALS",
        "notification_messages_token": "secret-token",
        "notification_messages_status": status,
        "token_expiry_timestamp": 1780392000000,
        "user_token_status": "NOT_REFRESHED",
    }
    env = one({**route(), "optin": optin})
    assert env.attrs["notification_messages_status"] == status
    assert env.attrs["notification_messages_opted_in"] is opted_in
    assert env.attrs["token_expiry_ms"] == 1780392000000
    # The token stays in raw only.
    assert "secret-token" not in str(env.attrs)


# -- who ---------------------------------------------------------------------------------


def test_a_guest_is_a_conversation_of_its_own_with_every_kind() -> None:
    guest = {"user_ref": "ref-7"}
    msg = one({**route(sender=guest), "message": {"mid": "m_g", "text": "hi"}})
    postback = one({**route(sender=guest), "postback": {"title": "Go", "payload": "GO"}})
    echo_route = route(sender={"id": PAGE}, recipient=guest)
    echo = one({**echo_route, "message": {"mid": "m_r", "is_echo": True, "text": "hello"}})
    assert {e.psid for e in (msg, postback, echo)} == {"user_ref:ref-7"}
    assert (msg.kind, postback.kind, echo.kind) == ("message", "postback", "message")
    assert echo.direction == "outbound"
    # A PSID of the same digits is another person: never the same key.
    assert one({**route(sender={"id": "ref-7"}), "message": {"mid": "m_p"}}).psid == "ref-7"


def test_an_item_with_an_id_and_a_user_ref_keeps_the_link() -> None:
    sender = {"id": USER, "user_ref": "ref-7"}
    env = one({**route(sender=sender), "message": {"mid": "m_l", "text": "hi"}})
    assert (env.psid, env.attrs["user_ref"]) == (USER, "ref-7")


def test_items_without_a_user_never_share_a_key() -> None:
    a = one({"recipient": {"id": PAGE}, "timestamp": T, "app_roles": {"1": ["primary"]}})
    b = one({"recipient": {"id": PAGE}, "timestamp": T, "app_roles": {"2": ["primary"]}})
    assert a.psid.startswith(NO_PSID_PREFIX)
    assert b.psid.startswith(NO_PSID_PREFIX)
    assert a.psid != b.psid


@pytest.mark.parametrize(
    "item",
    [
        {**route(sender={"id": PAGE}, recipient={"id": USER}), "message": {"mid": "m_s"}},
        {**route(sender={"id": PAGE}, recipient={"id": USER}), "read": {"watermark": T}},
        {
            **route(sender={"id": USER}, recipient={"id": PAGE}),
            "message": {"mid": "m_e", "is_echo": True},
        },
    ],
)
def test_the_page_as_its_own_user_is_a_defect(item: dict[str, Any]) -> None:
    with pytest.raises(ItemDefectError, match="page itself"):
        map_item(PAGE, None, item, "messaging")


def test_mid_forms_are_not_normalized() -> None:
    # Meta's docs document no equivalence between mid.$... and m_... (docs/gateway.md).
    old = one({**route(), "message": {"mid": "mid.$cAAJsujCd2ORj_1qmrFdzhVa-4cvO", "text": "x"}})
    new = one({**route(), "message": {"mid": "m_cAAJsujCd2ORj_1qmrFdzhVa-4cvO", "text": "x"}})
    assert old.mid == "mid.$cAAJsujCd2ORj_1qmrFdzhVa-4cvO"
    assert old.event_id != new.event_id


# -- Instagram ---------------------------------------------------------------------------


def ig(body_key: str, body: dict[str, Any], **kw: Any) -> Envelope:
    item = {**route(recipient={"id": ACCOUNT}, **kw), body_key: body}
    return one(item, ACCOUNT, "instagram")


@pytest.mark.parametrize(
    "kind",
    ["image", "video", "audio", "file", "share", "story_mention", "ig_reel", "reel", "ig_post"],
)
def test_instagram_attachments_are_kept_by_type(kind: str) -> None:
    payload: dict[str, Any] = {
        "url": f"https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id={kind}"
    }
    if kind in ("ig_reel", "reel"):
        payload |= {"reel_video_id": "18034567123456789", "title": "A reel"}
    if kind == "ig_post":
        payload |= {"ig_post_media_id": "18012345678901234", "title": "A post"}
    env = ig("message", {"mid": "aWdf1", "attachments": [{"type": kind, "payload": payload}]})
    assert (env.kind, env.platform, env.page_id) == ("message", "instagram", ACCOUNT)
    (summary,) = env.attrs["attachments"]
    assert summary["type"] == kind
    assert summary["url"] == payload["url"]
    for key in ("reel_video_id", "ig_post_media_id", "title"):
        assert summary.get(key) == payload.get(key)


def test_instagram_kinds_map_like_messenger_ones() -> None:
    mid = "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQx"
    assert ig("message", {"mid": mid, "text": "hi"}).kind == "message"
    story = {"mid": mid, "text": "nice", "reply_to": {"story": {"id": "351", "url": "https://x"}}}
    assert ig("message", story).attrs["reply_to_story"] == {"id": "351", "url": "https://x"}
    unsend = ig("message", {"mid": mid, "is_deleted": True})
    assert (unsend.kind, unsend.mid, unsend.attrs["is_deleted"]) == ("unsend", mid, True)
    seen = ig("read", {"mid": mid})
    assert (seen.kind, seen.mid, seen.watermark, seen.attrs["mids"]) == ("read", mid, T, [mid])
    reaction = ig("reaction", {"mid": mid, "action": "react", "reaction": "love", "emoji": "x"})
    assert reaction.kind == "reaction"
    assert ig("message_edit", {"mid": mid, "text": "hi!", "num_edit": 1}).kind == "edit"
    assert ig("postback", {"mid": "aWdf2", "title": "Hours?", "payload": "H"}).kind == "postback"
    assert (
        ig("referral", {"ref": "bio", "source": "IGME_LINK", "type": "OPEN_THREAD"}).kind
        == "referral"
    )
    echo = one(
        {
            **route(sender={"id": ACCOUNT}, recipient={"id": USER}),
            "message": {"mid": "aWdf3", "text": "ok", "is_echo": True},
        },
        ACCOUNT,
        "instagram",
    )
    assert (echo.kind, echo.direction, echo.psid) == ("message", "outbound", USER)


def test_an_instagram_items_id_is_the_messenger_rule_on_the_account() -> None:
    # Keys and ids are platform-blind: the same item on a page and on an account differs
    # only by the id that plays the page's role.
    item = {**route(recipient={"id": ACCOUNT}), "message": {"mid": "aWdf9", "text": "hi"}}
    on_ig = one(item, ACCOUNT, "instagram")
    on_page = one({**item, "recipient": {"id": PAGE}})
    assert on_page.platform == "messenger"
    assert on_ig.event_id != on_page.event_id
    assert (
        on_ig.event_id
        == Envelope.build(
            kind="message",
            page_id=ACCOUNT,
            psid=USER,
            mid="aWdf9",
            occurred_at=1,
            source="crawler",
            raw={},
        ).event_id
    )


@given(kind=st.sampled_from(INSTAGRAM_KINDS), seed=st.integers(0, 10_000))
def test_any_instagram_item_is_its_messenger_counterpart_but_for_the_platform(
    kind: str, seed: int
) -> None:
    item = WebhookSender("s", seed=seed).item(kind, ACCOUNT, USER)
    on_ig = one(item, ACCOUNT, "instagram")
    as_page = one(item, ACCOUNT, "messenger")
    assert on_ig.platform == "instagram"
    assert msgspec.structs.replace(on_ig, platform="messenger") == as_page
    assert on_ig.kind == ("message" if kind == "echo" else kind)
