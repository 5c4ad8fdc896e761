"""A fake of Meta's webhook sender: realistic, signed Messenger webhook bodies of every kind.

Items follow the formats of Meta's Messenger Platform webhook reference (``messages``,
``message_echoes``, ``message_deliveries``, ``message_reads``, ``message_reactions``,
``message_edits``, ``messaging_postbacks``, ``messaging_referrals``, handover protocol,
``messaging_optins``) plus a kind convsync does not parse (``account_linking``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import string
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from deploy.simulator.media import cdn_url

Item = dict[str, Any]
Style = Literal["meta", "utf8"]
BodyObject = Literal["page", "instagram"]

KINDS: Final = (
    "message",
    "echo",
    "delivery",
    "read",
    "reaction",
    "edit",
    "postback",
    "referral",
    "handover",
    "optin",
    "unknown",
)
# Instagram's kinds (an ``instagram`` body's items): Messenger's shapes without handover
# and opt-ins, plus the unsend (``message.is_deleted``).
INSTAGRAM_KINDS: Final = (
    "message",
    "echo",
    "read",
    "reaction",
    "edit",
    "postback",
    "referral",
    "unsend",
    "unknown",
)
TEXTS: Final = (
    "hello",
    "Is this still available?",
    "ça coûte combien ? 😊",
    "Здравствуйте! 👋🏽",
    "价格是多少?",
    'quotes " and \\ backslash / slash',
    "مرحبا",
    "👨‍👩‍👧‍👦 family emoji and 🇫🇷 flag",
)
EMOJIS: Final = (("love", "❤"), ("smile", "😆"), ("wow", "😮"), ("like", "👍"), ("other", "🤖"))
BASE_MS: Final = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MEDIA_MIX: Final = ("ok", "same", "sticker", "slow", "flaky", "missing", "expired", "huge")
MEDIA_WEIGHTS: Final = (50, 12, 10, 6, 6, 6, 5, 5)
MEDIA_TYPES: Final = (("image", "jpg"), ("video", "mp4"), ("audio", "mp4"), ("file", "pdf"))


def encode(body: Mapping[str, Any], *, style: Style = "meta") -> bytes:
    """Return ``body`` as the bytes Meta would send.

    ``meta`` escapes non-ASCII as ``\\uXXXX`` and ``/`` as ``\\/`` like Meta's sender;
    ``utf8`` writes raw UTF-8. Both are valid JSON of the same value.
    """
    if style == "meta":
        return (
            json.dumps(body, ensure_ascii=True, separators=(",", ":")).replace("/", "\\/").encode()
        )
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def signature(secret: str, raw: bytes) -> str:
    """Return the ``X-Hub-Signature-256`` value for ``raw``."""
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class SignedBody:
    """A POST as Meta sends it: the exact bytes and the headers that go with them."""

    raw: bytes
    headers: dict[str, str]
    body: dict[str, Any]


def page_body(
    entries: Iterable[tuple[str, Sequence[Item], Sequence[Item]]],
    *,
    time: int,
    obj: BodyObject = "page",
) -> dict[str, Any]:
    """Return ``{"object": obj, "entry": [...]}`` from ``(page, messaging, standby)`` rows
    (``obj="instagram"``: the ids are Instagram accounts)."""
    out = []
    for page_id, messaging, standby in entries:
        entry: dict[str, Any] = {"id": page_id, "time": time}
        if messaging:
            entry["messaging"] = list(messaging)
        if standby:
            entry["standby"] = list(standby)
        out.append(entry)
    return {"object": obj, "entry": out}


@dataclass
class WebhookSender:
    """Builds items and signed bodies like Meta does, deterministically from ``seed``."""

    app_secret: str
    seed: int = 0
    app_id: str = "1234567890123456"
    # Base URL of a deploy.simulator.media server: attachments then point there (a mix of
    # files, shared content, stickers, slow, flaky, missing, expired and huge ones).
    media_base: str | None = None
    rng: random.Random = field(init=False)
    clock: int = field(init=False, default=BASE_MS)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)  # noqa: S311 - test data, not secrets

    # ids and time -------------------------------------------------------------------
    def now(self) -> int:
        """Return a strictly increasing millisecond timestamp."""
        self.clock += self.rng.randint(1, 500)
        return self.clock

    def mid(self) -> str:
        """Return a fresh message id shaped like Meta's (``m_`` + url-safe characters)."""
        alphabet = string.ascii_letters + string.digits + "-_"
        return "m_" + "".join(self.rng.choice(alphabet) for _ in range(86))

    def psid(self) -> str:
        """Return a fresh 16-digit page-scoped user id."""
        return str(self.rng.randint(10**15, 10**16 - 1))

    @staticmethod
    def _route(page_id: str, psid: str, ts: int | None, *, echo: bool = False) -> Item:
        sender, recipient = (page_id, psid) if echo else (psid, page_id)
        item: Item = {"sender": {"id": sender}, "recipient": {"id": recipient}}
        if ts is not None:
            item["timestamp"] = ts
        return item

    # items ----------------------------------------------------------------------------
    def message(
        self,
        page_id: str,
        psid: str,
        *,
        text: str | None = None,
        mid: str | None = None,
        quick_reply: str | None = None,
        reply_to: str | None = None,
        attachments: list[dict[str, Any]] | None = None,
        ts: int | None = None,
    ) -> Item:
        """Return a ``messages`` item from the user to the page."""
        message: dict[str, Any] = {"mid": mid or self.mid()}
        if text is not None:
            message["text"] = text
        if quick_reply is not None:
            message["quick_reply"] = {"payload": quick_reply}
        if reply_to is not None:
            message["reply_to"] = {"mid": reply_to}
        if attachments:
            message["attachments"] = attachments
        return {**self._route(page_id, psid, ts or self.now()), "message": message}

    def attachments(self) -> list[dict[str, Any]]:
        """Return one attachment as Meta sends it: image, sticker or a fallback link."""
        if self.media_base is not None:
            return [self.media_attachment()]
        choice = self.rng.choice(("image", "sticker", "fallback"))
        cdn = "https://scontent.xx.fbcdn.net/v/t1.15752-9/"
        if choice == "image":
            return [{"type": "image", "payload": {"url": cdn + self.psid() + ".jpg"}}]
        if choice == "sticker":
            return [
                {"type": "image", "payload": {"url": cdn + "s.png", "sticker_id": 369239263222822}}
            ]
        return [
            {
                "type": "fallback",
                "payload": {"url": "https://example.com/p/1", "title": "A shared link"},
            }
        ]

    def media_attachment(self, behaviour: str | None = None) -> dict[str, Any]:
        """Return an attachment whose URL is on the media server (``media_base``).

        ``behaviour`` is one of :data:`deploy.simulator.media.BEHAVIOURS` or ``sticker``
        (one URL shared by many messages); by default a realistic mix.
        """
        if self.media_base is None:
            raise ValueError("media_base is not set")
        if behaviour is None:
            behaviour = self.rng.choices(MEDIA_MIX, weights=MEDIA_WEIGHTS)[0]
        if behaviour == "sticker":
            sticker = 369239263222822
            url = cdn_url(self.media_base, f"ok-sticker-{sticker}.png")
            return {"type": "image", "payload": {"url": url, "sticker_id": sticker}}
        kind, ext = self.rng.choice(MEDIA_TYPES)
        ident = self.psid()
        name = f"{behaviour}-{ident}.{ext}"
        if behaviour == "same":
            name = f"same-{self.rng.randint(1, 3)}-{ident}.{ext}"
        return {"type": kind, "payload": {"url": cdn_url(self.media_base, name)}}

    def echo(
        self, page_id: str, psid: str, *, text: str = "Thanks!", mid: str | None = None
    ) -> Item:
        """Return a ``message_echoes`` item: the page wrote to the user."""
        message = {
            "mid": mid or self.mid(),
            "is_echo": True,
            "app_id": int(self.app_id),
            "metadata": "sent-by-bot",
            "text": text,
        }
        return {**self._route(page_id, psid, self.now(), echo=True), "message": message}

    def delivery(self, page_id: str, psid: str, *, mids: list[str] | None = None) -> Item:
        """Return a ``message_deliveries`` item (no timestamp of its own, like Meta's)."""
        delivery: dict[str, Any] = {"watermark": self.now()}
        if mids:
            delivery["mids"] = mids
        return {**self._route(page_id, psid, None), "delivery": delivery}

    def read(self, page_id: str, psid: str) -> Item:
        """Return a ``message_reads`` item."""
        ts = self.now()
        return {**self._route(page_id, psid, ts), "read": {"watermark": ts - 1}}

    def reaction(self, page_id: str, psid: str, mid: str, *, action: str = "react") -> Item:
        """Return a ``message_reactions`` item on message ``mid``."""
        name, emoji = self.rng.choice(EMOJIS)
        reaction = {"reaction": name, "emoji": emoji, "action": action, "mid": mid}
        return {**self._route(page_id, psid, self.now()), "reaction": reaction}

    def edit(self, page_id: str, psid: str, mid: str, *, num_edit: int = 1) -> Item:
        """Return a ``message_edits`` item for message ``mid``."""
        edit = {"mid": mid, "text": self.rng.choice(TEXTS) + " (edited)", "num_edit": num_edit}
        return {**self._route(page_id, psid, self.now()), "message_edit": edit}

    def postback(self, page_id: str, psid: str, *, with_mid: bool = True) -> Item:
        """Return a ``messaging_postbacks`` item (button tap)."""
        postback: dict[str, Any] = {"title": "Get Started", "payload": "GET_STARTED"}
        if with_mid:
            postback["mid"] = self.mid()
        return {**self._route(page_id, psid, self.now()), "postback": postback}

    def referral(self, page_id: str, psid: str) -> Item:
        """Return a ``messaging_referrals`` item (m.me link)."""
        referral = {"ref": "spring-sale", "source": "SHORTLINK", "type": "OPEN_THREAD"}
        return {**self._route(page_id, psid, self.now()), "referral": referral}

    def handover(self, page_id: str, psid: str, *, action: str = "pass") -> Item:
        """Return a handover-protocol item: ``pass``, ``take`` or ``request`` thread control."""
        bodies: dict[str, tuple[str, dict[str, Any]]] = {
            "pass": (
                "pass_thread_control",
                {"new_owner_app_id": "263902037430900", "metadata": "to a human"},
            ),
            "take": (
                "take_thread_control",
                {"previous_owner_app_id": "263902037430900", "metadata": "back to the bot"},
            ),
            "request": (
                "request_thread_control",
                {"requested_owner_app_id": "263902037430900", "metadata": "please"},
            ),
        }
        key, body = bodies[action]
        return {**self._route(page_id, psid, self.now()), key: body}

    def optin(self, page_id: str, psid: str) -> Item:
        """Return a ``messaging_optins`` item (recurring notifications opt-in)."""
        optin = {
            "type": "notification_messages",
            "payload": "weekly-deals",
            "notification_messages_token": "nmt_" + "".join(self.rng.choices(string.digits, k=20)),
            "notification_messages_frequency": "WEEKLY",
            "token_expiry_timestamp": self.now() + 30 * 86_400_000,
            "user_token_status": "NOT_REFRESHED",
        }
        return {**self._route(page_id, psid, self.now()), "optin": optin}

    def unsend(self, page_id: str, psid: str, mid: str) -> Item:
        """Return an Instagram unsend: the user took message ``mid`` back."""
        message = {"mid": mid, "is_deleted": True}
        return {**self._route(page_id, psid, self.now()), "message": message}

    def unknown(self, page_id: str, psid: str) -> Item:
        """Return an ``account_linking`` item, a kind convsync stores as ``unknown``."""
        linking = {"status": "linked", "authorization_code": "code-" + self.psid()}
        return {**self._route(page_id, psid, self.now()), "account_linking": linking}

    def item(self, kind: str, page_id: str, psid: str) -> Item:
        """Return one item of ``kind`` (one of :data:`KINDS` or :data:`INSTAGRAM_KINDS`)
        with realistic content."""
        makers: dict[str, Callable[[], Item]] = {
            "message": lambda: self.message(
                page_id,
                psid,
                text=self.rng.choice(TEXTS),
                quick_reply="YES" if self.rng.random() < 0.2 else None,
                reply_to=self.mid() if self.rng.random() < 0.1 else None,
                attachments=self.attachments() if self.rng.random() < 0.2 else None,
            ),
            "echo": lambda: self.echo(page_id, psid),
            "delivery": lambda: self.delivery(page_id, psid, mids=[self.mid()]),
            "read": lambda: self.read(page_id, psid),
            "reaction": lambda: self.reaction(page_id, psid, self.mid()),
            "edit": lambda: self.edit(page_id, psid, self.mid()),
            "postback": lambda: self.postback(page_id, psid, with_mid=self.rng.random() < 0.5),
            "referral": lambda: self.referral(page_id, psid),
            "handover": lambda: self.handover(
                page_id, psid, action=self.rng.choice(("pass", "take", "request"))
            ),
            "optin": lambda: self.optin(page_id, psid),
            "unknown": lambda: self.unknown(page_id, psid),
            "unsend": lambda: self.unsend(page_id, psid, self.mid()),
        }
        return makers[kind]()

    # bodies ---------------------------------------------------------------------------
    def sign(self, body: dict[str, Any], *, style: Style = "meta") -> SignedBody:
        """Return ``body`` encoded and signed with the app secret."""
        raw = encode(body, style=style)
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": signature(self.app_secret, raw),
        }
        return SignedBody(raw, headers, body)

    def batch(
        self,
        pages: Sequence[str],
        *,
        items_per_page: int = 3,
        kinds: Sequence[str] = KINDS,
        standby_share: float = 0.0,
        style: Style = "meta",
        obj: BodyObject = "page",
    ) -> SignedBody:
        """Return one signed body with an entry per page (or Instagram account, with
        ``obj="instagram"``), each with random items."""
        rows = []
        for page_id in pages:
            messaging: list[Item] = []
            standby: list[Item] = []
            for _ in range(items_per_page):
                item = self.item(self.rng.choice(kinds), page_id, self.psid())
                (standby if self.rng.random() < standby_share else messaging).append(item)
            rows.append((page_id, messaging, standby))
        return self.sign(page_body(rows, time=self.now(), obj=obj), style=style)


@dataclass
class Dropper:
    """Meta giving up on deliveries: a seeded ``share`` of what passes is never sent.

    Meta retries an unanswered webhook for a while and then drops it; a sender that
    asks :meth:`keep` before each delivery loses that share for good, and ``dropped``
    keeps what was lost (to check that reconciliation brought it back).
    """

    share: float
    seed: int = 0
    dropped: list[Any] = field(default_factory=list)
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"share must be within [0, 1], not {self.share}")
        self.rng = random.Random(self.seed)  # noqa: S311 - seeded test traffic

    def keep(self, what: Any) -> bool:
        """Return False (and remember ``what``) for a delivery that is never made."""
        if self.rng.random() < self.share:
            self.dropped.append(what)
            return False
        return True


def post(url: str, signed: SignedBody, *, timeout: float = 10.0) -> int:
    """POST ``signed`` to ``url`` like Meta; return the HTTP status."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) url: {url}")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url, data=signed.raw, headers=signed.headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - scheme checked
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
