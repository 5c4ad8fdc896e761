"""Scenario 2: webhooks and a crawl at once; SIGKILL every component several times.

Beside the messages, the verdict covers the media archiver (killed too: every
attachment stored once with the CDN's sha256, none missing) and the contacts (every
page user named as Meta names them: crawled users by the participants, webhook-only
users by the crawler's profile fetcher, which is killed with the crawler)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from admin.status import collect
from cli.demo import crawl_done
from cli.demo.contacts import compare_contacts, pending_contacts
from cli.demo.media import compare_media, pending_media
from convsync.settings import Settings
from deploy.simulator.graph_api import GraphWorld
from deploy.simulator.webhooks import WebhookSender
from producers.crawler.request import new_request, submit
from tests.consumers.helpers import wait_for
from tests.fault.harness import (
    SECRET,
    Load,
    Pipeline,
    Progress,
    Truth,
    assert_exact,
    check,
    comparison_figures,
    load_figures,
    make_bodies,
    rss_kb,
    scan_secrets,
    truth_of,
    wait_caught_up,
    write_result,
)

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.integration]

VICTIMS = ("gateway", "mapper", "crawler-1", "materializer", "streams", "archiver")
# The profile fetcher names webhook-only users within the run.
CONTACTS_ENV = {"CONVSYNC_CONTACT_TICK": "1", "CONVSYNC_CONTACT_CALLS_PER_SECOND": "20"}
KILLS_EACH = 3


def test_sigkill_every_component(shared: Settings, scenario_logs: Path) -> None:
    began = time.monotonic()
    rng = random.Random(2)
    world = GraphWorld.generate(seed=22, pages=3, conversations=300, max_messages=6)
    pages = world.page_ids
    known = {p: [c.psid for c in world.conversations[p] if c.psid] for p in pages}
    bodies = make_bodies(WebhookSender(SECRET, seed=2), pages, 9000, known=known)
    # Meta's User Profile API knows the users who write only through webhooks too.
    for body in bodies:
        for page, user, *_ in body.messages:
            if page in pages and user.isdigit():
                world.add_user(page, user)
    settings = shared.model_copy(update={"page_tokens": {}})
    with Pipeline(settings, scenario_logs, world=world, media=True, extra_env=CONTACTS_ENV) as pipe:
        pipe.start("gateway", "crawler-1", "materializer", "streams", "archiver")
        progress = Progress(settings, pipe.group)
        progress.start()
        for p in pages:
            submit(settings, new_request(p, full=True))
        load = Load(f"{pipe.gateway_url}/webhook", bodies, rate=150, give_up_after=300)
        load.start()
        # 18 kills (3 per component) at random moments during and after the load, in random order.
        plan = [v for v in VICTIMS for _ in range(KILLS_EACH)]
        rng.shuffle(plan)
        kills: list[dict[str, object]] = []
        for victim in plan:
            time.sleep(rng.uniform(1.5, 4.5))
            assert pipe.comps[victim].alive(), f"{victim} died on its own"
            pipe.kill(victim)
            down = time.monotonic()
            time.sleep(rng.uniform(0.2, 2.0))
            pipe.start(victim)
            kills.append({"victim": victim, "at": round(down - began, 1), "up": time.monotonic()})
        load.join(400)
        wait_for(
            lambda: crawl_done(collect(settings), pages), timeout=240, what="the crawls to finish"
        )
        wait_caught_up(settings, pipe.group, timeout=180)
        wait_for(
            lambda: pending_media(settings) == 0 and pending_contacts(settings, pages) == 0,
            timeout=180,
            what="every attachment archived and every user named",
        )
        progress.stop()
        rss = {n: round(rss_kb(c.proc.pid) / 1024) for n, c in pipe.comps.items() if c.proc}
        dead = pipe.dead()
        crawls = {str(c["page_id"]): str(c["status"]) for c in collect(settings).crawls}
        truth = Truth()
        for p in pages:
            truth.messages |= {(a, b, c, d, e) for a, b, c, d, e in world.expected(p)["messages"]}
        webhook = truth_of(load.accepted)
        truth.messages |= webhook.messages
        truth.reads = webhook.reads
        truth.guests = webhook.guests
        result = check(settings, truth)
        media = compare_media(settings, world, pipe.media_dir)
        users = {(p, u) for p, u, *_ in truth.messages if p in pages}
        contacts = compare_contacts(settings, users, set())
    files, _lines, hits = scan_secrets(pipe.logs(), pipe.secrets())
    recoveries = [
        progress.recovery(float(str(k["up"]))) for k in kills if k["victim"] == "materializer"
    ]
    write_result(
        2,
        "Mixed run: SIGKILL gateway, crawler worker, materializer and streams worker",
        done=(
            "Fresh topics and schema on the shared stack, a fake Graph API with 3 pages x 300 "
            "conversations (attachments on a fake CDN), a gateway, its mapper, one crawler "
            "worker (a run with two: docs/crawler.md), a materializer, the faust streams "
            "worker and the media archiver as subprocesses. A full crawl of the 3 pages runs "
            "while signed webhooks for the same pages (same users too, chat-plugin guests, "
            "and an Instagram account's bodies) flow at 150 bodies/s, retried like Meta; the "
            "crawler's profile fetcher names the users seen only through webhooks. "
            f"{len(plan)} SIGKILLs ({KILLS_EACH} per component, random order, "
            "1.5-4.5 s apart; the whole process group, so the gateway's worker too), each "
            "followed by a restart 0.2-2 s later."
        ),
        scale="9,000 bodies at 150/s (about 60 s) + a crawl of 900 conversations; "
        f"{len(plan)} kills (issue: 'several times each')",
        figures={
            **load_figures(load),
            "messages from the crawl": sum(len(world.expected(p)["messages"]) for p in pages),
            "kills (victim @ s)": [f"{k['victim']} @ {k['at']}" for k in kills],
            "restarts": dict(pipe.restarts),
            "crawls": crawls,
            "materializer catch-up after each restart (s)": recoveries,
            "components dead at the end": dead,
            "RSS at the end (MB)": rss,
            **comparison_figures(result),
            "attachments stored / failed / expected (missing, unexpected, wrong, bad files)": (
                f"{media.stored} / {media.failed} / {media.expected} ({media.missing},"
                f" {media.unexpected}, {media.wrong}, {media.bad_files})"
            ),
            "contacts named as Meta names them / page users (unexpected rows)": (
                f"{contacts.expected - contacts.wrong} / {contacts.expected}"
                f" ({contacts.unexpected})"
            ),
            "log files scanned / secret hits": f"{files} / {len(hits)}",
        },
        seconds=time.monotonic() - began,
    )
    assert load.gave_up == 0
    assert dead == []
    assert set(crawls.values()) == {"done"}
    assert hits == []
    assert_exact(result)
    assert media.ok, media
    assert contacts.ok, contacts
