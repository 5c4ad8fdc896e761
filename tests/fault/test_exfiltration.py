"""Scenario 9: a token exfiltration attempt during crawls under webhook load."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path

import pytest

from admin.status import collect
from convsync.db import connect
from convsync.kafka import make_producer
from convsync.settings import Settings
from deploy.simulator.graph_api import GraphWorld, token_for
from deploy.simulator.webhooks import WebhookSender
from producers.crawler.request import CrawlView, new_request, read_view, submit
from schemas.crawl import ConversationTodo, CrawlRequest, CrawlStep
from schemas.records import DeadLetter
from tests.consumers.helpers import wait_for
from tests.fault.harness import (
    SECRET,
    SECRETS_SEEN,
    Load,
    Pipeline,
    Truth,
    assert_exact,
    check,
    comparison_figures,
    load_figures,
    make_bodies,
    read_topic,
    scan_secrets,
    truth_of,
    wait_caught_up,
    write_result,
)
from tests.producers.crawler.listener import RecordingListener

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.integration]

# The fake's page size (GraphThread's default caps): the attacks start on second pages.
CAP = 25


def views(settings: Settings, *crawl_ids: str) -> dict[str, CrawlView | None]:
    """Return each crawl's crawl_history view (None before its first write)."""
    with connect(settings) as conn:
        return {c: read_view(conn, settings.db_schema, c) for c in crawl_ids}


def ended(settings: Settings, *crawl_ids: str) -> bool:
    return all(
        v is not None and v.status in ("done", "failed")
        for v in views(settings, *crawl_ids).values()
    )


def produce_record(settings: Settings, record: CrawlRequest) -> None:
    """Produce a crawl record straight to the crawl topic, as anyone with access could."""
    producer = make_producer(settings)
    producer.produce(settings.topic("crawl"), record.to_bytes(), key=record.page_id.encode())
    assert producer.flush(30) == 0


def test_token_exfiltration_attempt(shared: Settings, scenario_logs: Path) -> None:
    began = time.monotonic()
    world = GraphWorld.generate(
        seed=29, pages=4, conversations=60, max_messages=4, long_threads=2, long_thread_messages=60
    )
    p_list, p_thread, p_plain, p_record = world.page_ids
    convs = {p: world.conversations[p] for p in world.page_ids}
    thread = next(c for c in convs[p_thread] if len(c.messages) == 60)
    listener = RecordingListener()
    # Responses: the conversation list of p_list and a message list of p_thread name the
    # listener as their next page from their second page on.
    world.faults.foreign_next = {p_list: listener.base_url, thread.thread_id: listener.base_url}
    world.faults.foreign_next_from = CAP
    known = {p: [c.psid for c in cs if c.psid] for p, cs in convs.items()}
    bodies = make_bodies(WebhookSender(SECRET, seed=9), world.page_ids, 1500, known=known)
    settings = shared.model_copy(update={"page_tokens": {}})
    proofs = [
        hmac.new(SECRET.encode(), token_for(p).encode(), hashlib.sha256).hexdigest()
        for p in world.page_ids
    ]
    SECRETS_SEEN.update(proofs)
    now = int(time.time() * 1000)
    # Records: a request whose stored cursor is the listener (it would start a crawl of
    # p_record), and a step of an unknown crawl of p_plain whose messages are there.
    start = new_request(p_record, full=True).model_copy(
        update={
            "step": CrawlStep(
                conversations_url=f"{listener.base_url}/{p_record}/conversations", started_at=now
            )
        }
    )
    todo = ConversationTodo(thread_id=convs[p_plain][0].thread_id, psid="1", updated_at=now)
    stale = new_request(p_plain, full=True).model_copy(
        update={
            "seq": 4,
            "step": CrawlStep(
                conversations_exhausted=True,
                queue=(todo,),
                messages_url=f"{listener.base_url}/{todo.thread_id}/messages?after=x",
                started_at=now,
            ),
        }
    )
    try:
        with Pipeline(settings, scenario_logs, world=world) as pipe:
            assert pipe.graph is not None
            # Like Meta with "Require App Secret" on: every call needs appsecret_proof.
            pipe.graph.server.app_secret = SECRET
            pipe.start("gateway", "crawler-1", "materializer")
            crawls = {p: new_request(p, full=True) for p in (p_list, p_thread, p_plain)}
            submit(settings, *crawls.values())
            load = Load(f"{pipe.gateway_url}/webhook", bodies, rate=100, give_up_after=120)
            load.start()
            time.sleep(2.0)
            produce_record(settings, start)
            produce_record(settings, stale)
            wait_for(lambda: ended(settings, start.crawl_id), timeout=60, what="the hostile crawl")
            # The attacked page is not wedged: a plain crawl of it goes through.
            crawls[p_record] = new_request(p_record, full=True)
            submit(settings, crawls[p_record])
            load.join(240)
            ids = [c.crawl_id for c in crawls.values()]
            wait_for(lambda: ended(settings, *ids), timeout=120, what="the crawls to end")
            wait_caught_up(settings, pipe.group, timeout=120)
            final = views(settings, start.crawl_id, *ids)
            page_status = {str(c["page_id"]): str(c["status"]) for c in collect(settings).crawls}
            dead = pipe.dead()
            # What the attacked crawls fetched before the attack: p_list its first
            # conversations page, p_thread every thread before the attacked one and that
            # thread's first page of messages.
            fetched = {m.mid for c in convs[p_list][:CAP] for m in c.messages}
            before = convs[p_thread][: convs[p_thread].index(thread)]
            fetched |= {m.mid for c in before for m in c.messages}
            fetched |= {m.mid for m in thread.messages[:CAP]}
            truth = Truth()
            for p in world.page_ids:
                rows = world.expected(p)["messages"]
                if p in (p_list, p_thread):
                    rows = [r for r in rows if r[2] in fetched]
                truth.messages |= {(a, b, c, d, e) for a, b, c, d, e in rows}
            webhook = truth_of(load.accepted)
            truth.messages |= webhook.messages
            truth.reads = webhook.reads
            result = check(settings, truth)
            proofs_checked = pipe.graph.server.proofs_checked
            graph_calls = sum(c.calls for c in world.calls.values())
    finally:
        listener.stop()
    heard = listener.requests()
    letters = [DeadLetter.model_validate_json(m.value() or b"") for m in read_topic(shared, "dlq")]
    files, _lines, hits = scan_secrets(pipe.logs(), [*pipe.secrets(), *proofs])
    errors = {
        name: (final[c.crawl_id].last_error if final[c.crawl_id] else None)
        for name, c in (("list", crawls[p_list]), ("thread", crawls[p_thread]), ("record", start))
    }
    statuses = {c.page_id: getattr(final[c.crawl_id], "status", None) for c in crawls.values()}
    write_result(
        9,
        "Token exfiltration attempt: hostile crawl records and paging.next",
        done=(
            "A fake Graph API that requires appsecret_proof, with 4 pages x 60 conversations; "
            "a gateway, one crawler worker and a materializer as subprocesses; a recording "
            "listener on another port of 127.0.0.1 stands for the attacker. Full crawls of 3 "
            "pages run while signed webhooks for all 4 flow at 100 bodies/s. The fake's "
            "second page of one page's conversation list, and of a 60-message thread of "
            "another, names the listener as paging.next; two crawl records produced straight "
            "to the crawl topic carry listener URLs: a request that would start a crawl of the "
            "4th page, and a step of an unknown crawl of the 3rd. Then the 4th page is crawled "
            "normally. The truth of the attacked pages is what they fetched before the attack."
        ),
        scale="1,500 bodies at 100/s + crawls of 4 x 60 conversations; 2 hostile responses, "
        "2 hostile records (issue: 'a listener ... must see nothing')",
        figures={
            **load_figures(load),
            "requests heard by the listener": len(heard),
            "Authorization headers heard by the listener": sum(1 for h in heard if h.authorization),
            "Graph calls (each with appsecret_proof checked)": f"{graph_calls} ({proofs_checked})",
            "crawls (page: status)": statuses,
            "hostile record's crawl": getattr(final[start.crawl_id], "status", None),
            "reasons (attacked list / thread / record)": [(e or "")[:160] for e in errors.values()],
            "dead letters (crawler)": sum(1 for d in letters if d.component == "crawler"),
            "crawl status per page at the end": page_status,
            "components dead at the end": dead,
            **comparison_figures(result),
            "log files scanned / secret and proof hits": f"{files} / {len(hits)}",
        },
        seconds=time.monotonic() - began,
    )
    assert heard == [], heard
    assert proofs_checked == graph_calls > 0
    assert statuses == {p_list: "failed", p_thread: "failed", p_plain: "done", p_record: "done"}
    assert "paging.next" in (errors["list"] or "") and "/conversations" in (errors["list"] or "")
    assert "paging.next" in (errors["thread"] or "") and "/messages" in (errors["thread"] or "")
    assert getattr(final[start.crawl_id], "status", None) == "failed"
    assert "crawl record refused" in (errors["record"] or "")
    assert sorted(
        (d.component, CrawlRequest.from_bytes(d.original_value()).crawl_id) for d in letters
    ) == sorted([("crawler", start.crawl_id), ("crawler", stale.crawl_id)])
    assert all("may not receive a page token" in d.reason for d in letters)
    assert load.gave_up == 0 and dead == [] and hits == []
    assert_exact(result)
