"use strict";
// Polls dashboard/data and renders it; every value goes in as text, never as HTML.

function cell(row, value) {
  const td = document.createElement("td");
  if (value instanceof Node) td.appendChild(value); else td.textContent = value ?? "";
  row.appendChild(td);
}

function bar(fraction) {
  const wrap = document.createElement("span");
  const outer = document.createElement("span");
  outer.className = "bar";
  const inner = document.createElement("span");
  const pct = fraction == null ? 0 : Math.round(fraction * 100);
  inner.style.width = pct + "%";
  outer.appendChild(inner);
  wrap.appendChild(outer);
  wrap.appendChild(document.createTextNode(fraction == null ? " –" : " " + pct + "%"));
  wrap.dataset.progress = String(pct);
  return wrap;
}

function fill(id, rows, columns) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren();
  for (const r of rows) {
    const tr = document.createElement("tr");
    for (const c of columns) cell(tr, typeof c === "function" ? c(r) : r[c]);
    body.appendChild(tr);
  }
}

function drawRates(samples) {
  const canvas = document.getElementById("rate-chart");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const points = samples.filter((s) => s.events_per_s != null);
  if (points.length < 1) return;
  const max = Math.max(1, ...points.map((p) => p.events_per_s));
  ctx.strokeStyle = "#2a7ae2";
  ctx.beginPath();
  points.forEach((p, i) => {
    const x = points.length === 1 ? 0 : (i / (points.length - 1)) * (canvas.width - 1);
    const y = canvas.height - 1 - (p.events_per_s / max) * (canvas.height - 12);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
  ctx.fillStyle = "#222";
  ctx.fillText("max " + max.toFixed(1) + " events/s", 4, 10);
}

async function refresh() {
  const res = await fetch("dashboard/data", { credentials: "same-origin" });
  if (!res.ok) {
    document.getElementById("errors").textContent = "data: HTTP " + res.status;
    return;
  }
  const d = await res.json();
  document.getElementById("events-rows").textContent = d.events_rows;
  document.getElementById("conversations-rows").textContent = d.conversations_rows;
  document.getElementById("dlq-count").textContent = d.dlq_records;
  const last = d.rates.length ? d.rates[d.rates.length - 1].events_per_s : null;
  document.getElementById("events-rate").textContent = last == null ? "–" : last.toFixed(1);
  document.getElementById("errors").textContent = d.errors.join("; ");
  fill("active-syncs", d.active_syncs, ["page_id", "crawl_id", "status",
    (r) => bar(r.progress), "conversations_done", "messages_fetched"]);
  fill("recent-syncs", d.recent_syncs, ["page_id", "crawl_id", "status",
    (r) => bar(r.progress), "conversations_done", "messages_fetched", "finished_at"]);
  fill("pages-attention", d.pages_attention, ["page_id", "platform", "name", "status",
    "status_message", (r) => (r.crawl_paused ? "paused, cursor kept" : "")]);
  fill("needs-reply", d.needs_reply, ["page_id", "needs_reply"]);
  fill("attention", d.attention, [(r) => pageLink(r.page_id), "reason", "detail", "since",
    "crawl_id"]);
  fill("lags", d.lags, ["group", "topic", "partition", "next_offset", "high_watermark", "lag"]);
  fill("dlq", d.dlq_recent, [(r) => r.failed_at ? new Date(r.failed_at).toISOString() : "",
    "component", "error_type", "reason", (r) => (r.topic ?? "") + "[" + (r.partition ?? "") + "]@" + (r.source_offset ?? "")]);
  drawRates(d.rates);
  document.getElementById("updated").textContent = "updated " + new Date().toISOString();
  document.body.dataset.loaded = "true";
}

// A page id that shows the page's crawl history when clicked.
function pageLink(pageId) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "link";
  b.textContent = pageId;
  b.addEventListener("click", () => {
    document.getElementById("history-page").value = pageId;
    showHistory(false).catch((e) => { document.getElementById("errors").textContent = String(e); });
  });
  return b;
}

let historyCursor = null;

function cancelButton(r) {
  if (!["queued", "running", "failed"].includes(r.status)) return "";
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = "cancel";
  b.addEventListener("click", async () => {
    const res = await fetch("crawls/" + encodeURIComponent(r.crawl_id),
      { method: "DELETE", credentials: "same-origin" });
    b.textContent = res.ok ? "cancelled" : "HTTP " + res.status;
    b.disabled = true;
  });
  return b;
}

async function showHistory(more) {
  const page = encodeURIComponent(document.getElementById("history-page").value.trim());
  let url = "pages/" + page + "/crawls?limit=20";
  if (more && historyCursor) url += "&cursor=" + encodeURIComponent(historyCursor);
  const res = await fetch(url, { credentials: "same-origin" });
  const table = document.getElementById("crawl-history");
  if (!res.ok) { table.dataset.status = String(res.status); return; }
  const d = await res.json();
  const body = table.querySelector("tbody");
  if (!more) body.replaceChildren();
  for (const r of d.items) {
    const tr = document.createElement("tr");
    const p = r.progress;
    for (const v of [r.crawl_id, r.status + (r.resumable ? " (resumable)" : ""), r.attempt,
      bar(p.fraction), p.conversations_done + " / " + p.conversations_known,
      p.messages_done + " / " + p.messages_known, r.calls.graph, r.throttle.pauses,
      r.skipped.count, r.errors.last_error, r.timings.requested_at,
      r.timings.seconds == null ? "" : r.timings.seconds.toFixed(1), cancelButton(r)]) {
      cell(tr, v);
    }
    body.appendChild(tr);
  }
  historyCursor = d.next_cursor;
  document.getElementById("history-more").hidden = !historyCursor;
  table.dataset.status = "200";
}

document.getElementById("history").addEventListener("submit", (ev) => {
  ev.preventDefault();
  showHistory(false).catch((e) => { document.getElementById("errors").textContent = String(e); });
});
document.getElementById("history-more").addEventListener("click", () => {
  showHistory(true).catch((e) => { document.getElementById("errors").textContent = String(e); });
});

// The name Meta gave the conversation's user (contacts): the name, else @username.
function contactName(contact) {
  if (!contact) return "";
  return contact.name || (contact.username ? "@" + contact.username : "");
}

document.getElementById("page-list").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const page = encodeURIComponent(document.getElementById("page-list-page").value.trim());
  const res = await fetch("pages/" + page + "/conversations?limit=50", { credentials: "same-origin" });
  const table = document.getElementById("conversations");
  const items = res.ok ? (await res.json()).items : [];
  fill("conversations", items, [(r) => contactName(r.contact), "psid", "last_message_at",
    (r) => (r.needs_reply ? "yes" : ""), "last_message_text"]);
  table.dataset.status = String(res.status);
});

document.getElementById("lookup").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const page = encodeURIComponent(document.getElementById("lookup-page").value.trim());
  const psid = encodeURIComponent(document.getElementById("lookup-psid").value.trim());
  const res = await fetch("conversations/" + page + "/" + psid + "?limit=20", { credentials: "same-origin" });
  const out = document.getElementById("lookup-result");
  const body = res.ok ? await res.json() : null;
  document.getElementById("lookup-contact").textContent = body ? contactName(body.contact) : "";
  out.textContent = body ? JSON.stringify(body, null, 2) : "HTTP " + res.status;
  out.dataset.status = String(res.status);
});

refresh().catch((e) => { document.getElementById("errors").textContent = String(e); });
setInterval(() => refresh().catch((e) => {
  document.getElementById("errors").textContent = String(e);
}), 2000);
