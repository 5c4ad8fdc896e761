"""The fake Graph API's world: seeded pages, conversations, messages and profiles.

:class:`GraphWorld` is the data the fake serves, deterministic from a seed
(:meth:`GraphWorld.generate`), with the truth a full crawl must find
(:meth:`GraphWorld.expected`) and the JSON bodies of its records as the Graph API
lists them (conversations, messages, attachments on the media server, User Profile
API fields). A page may have a linked Instagram account (:meth:`GraphWorld.link_instagram`,
its inbox made by :mod:`deploy.simulator.graph_instagram`). Separate from the HTTP
server (:mod:`deploy.simulator.graph_api`) and the fault switches and call limits
(:mod:`deploy.simulator.graph_faults`): this module holds what there is to read, not
how a call to read it is answered.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field
from typing import Any, Final

from deploy.simulator.graph_faults import AppCalls, Faults, PageCalls
from deploy.simulator.media import cdn_url

BASE_MS: Final = 1_700_000_000_000


def graph_time(ms: int) -> str:
    """Return ``ms`` in the Graph API's ``created_time`` format (second precision)."""
    # time.gmtime gives the text datetime.fromtimestamp(..., UTC).strftime gives, cheaper.
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(ms // 1000))


@dataclass(frozen=True, slots=True)
class FakeMessage:
    """One message of a thread as the fake stores it."""

    mid: str
    created_ms: int
    from_page: bool
    text: str | None
    malformed: bool = False


@dataclass(slots=True)
class FakeConversation:
    """One thread; ``messages`` are newest first, like the Graph API returns them."""

    thread_id: str
    page_id: str  # an Instagram conversation's: the account id
    psid: str | None
    messages: list[FakeMessage]
    instagram: bool = False

    @property
    def updated_ms(self) -> int:
        """Return the time of the newest message."""
        return self.messages[0].created_ms if self.messages else BASE_MS


@dataclass
class GraphWorld:
    """The fake's data: pages -> conversations (newest updated first), all seeded."""

    conversations: dict[str, list[FakeConversation]]
    faults: Faults = field(default_factory=Faults)
    calls: dict[str, PageCalls] = field(default_factory=dict)
    app_calls: AppCalls = field(default_factory=AppCalls)
    # Base URL of a deploy.simulator.media server: attachments then carry URLs there.
    media_base: str | None = None
    # Instagram: account id -> its conversations (newest updated first), and the page
    # each account is linked to (page id -> account id).
    instagram: dict[str, list[FakeConversation]] = field(default_factory=dict)
    linked: dict[str, str] = field(default_factory=dict)
    _ig_threads: dict[str, FakeConversation] = field(default_factory=dict)
    # User Profile API answers beyond the threads' users (e.g. users seen only through
    # webhooks): user id -> (page id, fields); see add_profile and profile_json.
    profiles: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)
    # User Profile API calls per user id (refused ones too).
    profile_calls: dict[str, int] = field(default_factory=dict)

    @classmethod
    def generate(
        cls,
        *,
        seed: int,
        pages: int = 1,
        conversations: int = 20,
        max_messages: int = 8,
        long_threads: int = 0,
        long_thread_messages: int = 45,
        no_user: int = 0,
        malformed: int = 0,
        textless_ratio: float = 0.1,
        faults: Faults | None = None,
    ) -> GraphWorld:
        """Return a world of ``pages`` pages with ``conversations`` threads each.

        ``long_threads`` threads get ``long_thread_messages`` messages (to cross the
        details limit and several message pages); ``no_user`` threads have only the page
        as participant; ``malformed`` messages carry an unparseable ``created_time``.
        """
        rng = random.Random(seed)  # noqa: S311 - seeded test data, not secrets
        world: dict[str, list[FakeConversation]] = {}
        for p in range(pages):
            page_id = f"{100000 + seed % 1000 * 100 + p}"
            convs = []
            t = BASE_MS
            for c in range(conversations):
                n = long_thread_messages if c < long_threads else rng.randint(1, max_messages)
                msgs = []
                for m in range(n):
                    t += rng.randint(1, 5) * 1000
                    text = None if rng.random() < textless_ratio else f"hello {p}.{c}.{m}"
                    msgs.append(FakeMessage(f"m_{page_id}_{c}_{m}", t, rng.random() < 0.3, text))
                msgs.reverse()
                psid = None if c >= conversations - no_user else f"{9000000 + p * 100000 + c}"
                convs.append(FakeConversation(f"t_{page_id}_{c}", page_id, psid, msgs))
            for i in range(malformed):
                conv = convs[(i * 7) % len(convs)]
                if conv.psid is not None:
                    old = conv.messages[0]
                    conv.messages[0] = FakeMessage(
                        old.mid, old.created_ms, old.from_page, old.text, malformed=True
                    )
            rng.shuffle(convs)
            convs.sort(key=lambda cv: cv.updated_ms, reverse=True)
            world[page_id] = convs
        return cls(world, faults or Faults())

    @property
    def page_ids(self) -> list[str]:
        """Return the page ids."""
        return list(self.conversations)

    def link_instagram(
        self, page_id: str, account_id: str, conversations: list[FakeConversation]
    ) -> None:
        """Link the Instagram account ``account_id`` with its inbox to ``page_id``."""
        if page_id not in self.conversations:
            raise KeyError(page_id)
        self.linked[page_id] = account_id
        self.instagram[account_id] = sorted(conversations, key=lambda c: -c.updated_ms)
        self._ig_threads.update((c.thread_id, c) for c in conversations)

    def token_page(self, conv: FakeConversation) -> str:
        """Return the page whose token reads ``conv`` (an Instagram account's linked page)."""
        if not conv.instagram:
            return conv.page_id
        return next(p for p, a in self.linked.items() if a == conv.page_id)

    def thread(self, thread_id: str) -> FakeConversation | None:
        """Return the conversation ``thread_id``."""
        if thread_id in self._ig_threads:
            return self._ig_threads[thread_id]
        page_id = thread_id.split("_")[1] if thread_id.startswith("t_") else ""
        for conv in self.conversations.get(page_id, []):
            if conv.thread_id == thread_id:
                return conv
        return None

    def add_message(self, thread_id: str, *, text: str, from_page: bool = False) -> FakeMessage:
        """Append a new newest message to a thread (for incremental crawls); return it."""
        conv = self.thread(thread_id)
        if conv is None:
            raise KeyError(thread_id)
        pool = (self.instagram if conv.instagram else self.conversations)[conv.page_id]
        newest = max(cv.updated_ms for cv in pool)
        at = max(int(time.time() * 1000), newest + 1000)
        msg = FakeMessage(f"m_{thread_id}_n{len(conv.messages)}", at, from_page, text)
        conv.messages.insert(0, msg)
        pool.sort(key=lambda cv: cv.updated_ms, reverse=True)
        return msg

    def add_profile(self, page_id: str, user_id: str, **fields: str) -> None:
        """Give the User Profile API an answer about ``user_id`` for ``page_id``'s token
        (Messenger: ``first_name``, ``last_name``, ``profile_pic``; Instagram: ``name``,
        ``username``, ``profile_pic``)."""
        self.profiles[user_id] = (page_id, dict(fields))

    def add_user(self, owner: str, user_id: str) -> None:
        """Give the User Profile API its default answer about ``user_id``, a user of the
        page or Instagram account ``owner`` (one the threads do not know, such as a user
        seen only through webhooks)."""
        instagram = owner in self.instagram
        page = next(p for p, a in self.linked.items() if a == owner) if instagram else owner
        self.profiles[user_id] = (page, default_profile(user_id, instagram=instagram))

    def profile(self, user_id: str) -> tuple[str, dict[str, str]] | None:
        """Return (page id whose token may ask, fields) of ``user_id``: an added profile,
        else the thread user's default one (named as the participants name them)."""
        if user_id in self.profiles:
            return self.profiles[user_id]
        for page_id, convs in self.conversations.items():
            for conv in convs:
                if conv.psid == user_id:
                    return page_id, default_profile(user_id, instagram=False)
        for convs in self.instagram.values():
            for conv in convs:
                if conv.psid == user_id:
                    return self.token_page(conv), default_profile(user_id, instagram=True)
        return None

    def detailed(self, index: int) -> bool:
        """Return whether the ``index``-th newest message of a thread has details."""
        limit = self.faults.details_limit
        return limit is None or index < limit

    def expected(self, page_id: str) -> dict[str, Any]:
        """Return the truth for a full crawl of ``page_id``.

        ``messages`` is a list of ``[page, psid, mid, text, direction]`` (text and
        direction ``None`` when the message has no details); ``skipped`` counts reasons.
        """
        rows: list[list[str | None]] = []
        skipped: dict[str, int] = {}
        convs = self.instagram.get(page_id) or self.conversations[page_id]
        for conv in convs:
            if conv.psid is None:
                skipped["no_user_participant"] = skipped.get("no_user_participant", 0) + 1
                continue
            for i, m in enumerate(conv.messages):
                if m.malformed:
                    skipped["invalid_message"] = skipped.get("invalid_message", 0) + 1
                    continue
                if self.detailed(i):
                    direction = "outbound" if m.from_page else "inbound"
                    rows.append([page_id, conv.psid, m.mid, m.text, direction])
                else:
                    rows.append([page_id, conv.psid, m.mid, None, None])
        return {
            "messages": rows,
            "conversations": sum(1 for c in convs if c.psid),
            "skipped": skipped,
        }

    # -- JSON bodies -----------------------------------------------------------------

    def conversation_json(self, conv: FakeConversation) -> dict[str, Any]:
        """Return a conversation as the Graph API lists it."""
        people = [_person(conv, conv.page_id)]
        if conv.psid is not None:
            people.insert(0, _person(conv, conv.psid))
        return {
            "id": conv.thread_id,
            "updated_time": graph_time(conv.updated_ms),
            "message_count": len(conv.messages),
            "participants": {"data": people},
        }

    def message_json(self, conv: FakeConversation, index: int) -> dict[str, Any]:
        """Return the ``index``-th newest message of ``conv`` as the Graph API lists it."""
        m = conv.messages[index]
        created = "not-a-time" if m.malformed else graph_time(m.created_ms)
        if not self.detailed(index):
            return {"id": m.mid, "created_time": created}
        user = _person(conv, conv.psid or "0")
        page = _person(conv, conv.page_id)
        sender, receiver = (page, user) if m.from_page else (user, page)
        body: dict[str, Any] = {
            "id": m.mid,
            "created_time": created,
            "from": sender,
            "to": {"data": [receiver]},
        }
        if m.text is not None:
            body["message"] = m.text
        elif conv.instagram:
            # A shared post: Graph gives its media URL in shares, the text is empty.
            body["message"] = ""
            body["shares"] = {"data": [{"link": f"https://cdn.invalid/ig/{m.mid}.jpg"}]}
        else:
            body["message"] = ""
            attachment: dict[str, Any] = {
                "id": f"a_{m.mid}",
                "mime_type": "image/jpeg",
                "name": "photo.jpg",
            }
            if self.media_base is not None:
                attachment.update(self.media_json(m.mid))
            body["attachments"] = {"data": [attachment]}
        return body

    def media_json(self, mid: str) -> dict[str, Any]:
        """Return the fields of a message attachment with a URL on the media server,
        shaped like Graph's (``image_data``, ``video_data`` or ``file_url``), chosen
        from the message id: mostly files, some shared content, missing and expired."""
        assert self.media_base is not None
        h = int.from_bytes(hashlib.sha256(mid.encode()).digest()[:4], "big")
        behaviour = {0: "missing", 1: "expired", 2: "same-1"}.get(h % 20, "ok")
        if h % 7 == 3:
            url = cdn_url(self.media_base, f"{behaviour}-{mid}.mp4")
            return {"mime_type": "video/mp4", "name": "video.mp4", "video_data": {"url": url}}
        if h % 11 == 4:
            url = cdn_url(self.media_base, f"{behaviour}-{mid}.pdf")
            return {"mime_type": "application/pdf", "name": "file.pdf", "file_url": url}
        url = cdn_url(self.media_base, f"{behaviour}-{mid}.jpg")
        return {"image_data": {"url": url, "width": 640, "height": 480}}


def default_profile(user_id: str, *, instagram: bool) -> dict[str, str]:
    """Return the User Profile API's fields of a user: Messenger's first and last name
    (``User`` and the id, as the participants name them), Instagram's name and username
    (``ig_`` and the id, the participants' username)."""
    pic = f"https://platform-lookaside.fbsbx.com/p/{user_id}.jpg"
    if instagram:
        return {"name": f"User {user_id}", "username": f"ig_{user_id}", "profile_pic": pic}
    return {"first_name": "User", "last_name": user_id, "profile_pic": pic}


def _person(conv: FakeConversation, who: str) -> dict[str, str]:
    """Return a participant: Messenger gives a name, Instagram a username."""
    if conv.instagram:
        return {"username": f"ig_{who}", "id": who}
    kind = "Page" if who == conv.page_id else "User"
    return {"id": who, "name": f"{kind} {who}"}
