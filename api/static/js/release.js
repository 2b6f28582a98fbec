// One release: its facts and liveness, the verbs, a bar per batch, failures by kind, its
// nodes (filtered and paged: 10,000 of them render 100 rows), and its events as they happen.

import * as api from "./api.js";
import { actor, duration, h, pageOf, replace, status, when } from "./dom.js";
import { coalesced, follow } from "./live.js";
import { holding, planText, stepText } from "./step.js";

const NODE_STATES = ["success", "failed", "running", "pending", "skipped", "cancelled"];
const TERMINAL = new Set(["success", "failed", "cancelled"]);
const NODES_PER_PAGE = 100;
const EVENTS_SHOWN = 300;
const STALLED_AFTER_SEC = 30;
const KIND_NAMES = {
  rejected: "agent rejected the config",
  timeout: "timeout",
  unreachable: "unreachable",
  tls: "TLS",
  protocol: "protocol",
  deadline: "deadline",
  other: "other",
};
const VERB_TEXT = {
  pause: "Stop sending the config to more nodes; nodes already applying finish.",
  resume: "Go on sending the config from where the release was paused.",
  cancel: "Stop the release: nodes not yet sent the config are cancelled.",
  retry: "Run the release again over its failed, skipped and cancelled nodes.",
  rollback: "Create a release that puts back, on this release's nodes, the config they ran before.",
};

// What a promote does at the step the release holds at (a bake or a gate), or with ``full``.
function promoteText(step, full) {
  if (full) return "Skip every bake and gate left: the release runs its remaining batches without pausing.";
  if (step && step.kind === "bake") return `End the bake after batch ${step.batch} now: the release goes on to its next batch.`;
  return `Pass the gate after batch ${step ? step.batch : "-"}: the release goes on to its next batch.`;
}

function counts(nodes) {
  const found = Object.fromEntries(NODE_STATES.map((s) => [s, 0]));
  for (const node of nodes) found[node.status] = (found[node.status] || 0) + 1;
  return found;
}

function batchBar(nodes) {
  const found = counts(nodes);
  const total = nodes.length;
  return h(
    "div",
    { class: "bar" },
    NODE_STATES.filter((s) => found[s]).map((s) =>
      h("span", { class: s, style: `width:${(100 * found[s]) / total}%`, title: `${s}: ${found[s]}` }),
    ),
  );
}

export async function releaseView(view, me, id) {
  let data = await api.release(id);
  const events = [];
  const seen = new Set();
  const filter = { status: "", batch: "", kind: "", text: "", page: 0 };
  let allNodes = [];
  let stream = null;
  let leaseCheck = null;

  const facts = h("div", { class: "card", id: "facts" });
  const liveness = h("div", { class: "card", id: "liveness" });
  const verbs = h("div", { class: "verbs", id: "verbs" });
  const flash = h("p", { id: "flash", role: "status" });
  const stepLine = h("dd", { id: "step" });
  const stepMarker = h("div", { class: "step-marker", id: "step-marker" });
  const batches = h("div", { class: "card", id: "batches" });
  const failures = h("div", { id: "failures" });
  const nodesBody = h("tbody");
  const nodesInfo = h("span", { class: "muted", id: "nodes-info" });
  const eventsBody = h("tbody");

  const now = () => Date.now() + api.serverSkew();
  const ago = (iso) => (iso ? `${duration((now() - Date.parse(iso)) / 1000)} ago` : "never");

  function renderFacts() {
    const r = data.release;
    replace(
      facts,
      h(
        "h1",
        {},
        `Release #${r.id} · version ${r.version} `,
        status(r.status),
        r.cancelling ? " cancelling" : "",
      ),
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "created by"),
        h("dd", { id: "created-by" }, actor(r.createdBy)),
        h("dt", {}, "why"),
        h("dd", { id: "reason" }, r.reason || h("span", { class: "muted" }, "no reason given")),
        h("dt", {}, "target · scope"),
        h("dd", {}, `${r.target} · ${r.scope || "all"}`),
        h("dt", {}, "config version"),
        h(
          "dd",
          {},
          String(r.configVersion),
          r.rollbackOf ? h("span", {}, " rollback of ", h("a", { href: `#/releases/${r.rollbackOf}` }, `#${r.rollbackOf}`)) : "",
          r.heldFor ? h("span", {}, " paused behind rollback ", h("a", { href: `#/releases/${r.heldFor}` }, `#${r.heldFor}`)) : "",
        ),
        h("dt", {}, "plan"),
        h("dd", { id: "plan" }, planText(r), ` · max failures ${r.maxFailures ?? "-"}`, r.strategy && r.strategy.maxFailurePercent != null ? ` · max ${r.strategy.maxFailurePercent}% failed` : "", r.strategy ? ` · on failure ${r.strategy.onFailure}` : "", ` · max parallel ${r.maxParallel ?? "-"}`),
        h("dt", {}, "current step"),
        stepLine,
        h("dt", {}, "times"),
        h("dd", {}, `created ${when(r.createdAt)} · started ${when(r.startedAt)} · finished ${when(r.finishedAt)}`),
        r.lastVerb ? [h("dt", {}, "last verb"), h("dd", { id: "last-verb" }, `${r.lastVerb.verb} by ${r.lastVerb.by || "-"}: ${r.lastVerb.reason || "no reason"}`)] : null,
        r.waitingFor ? [h("dt", {}, "waiting"), h("dd", {}, r.waitingFor.reason)] : null,
        r.error ? [h("dt", {}, "error"), h("dd", { class: "error", id: "release-error" }, r.error)] : null,
      ),
    );
  }

  // The step, ticking: a bake counts down to its end (the server's clock); a gate waits.
  function renderStep() {
    const r = data.release;
    const text = stepText(r, data.batches.length, now());
    replace(stepLine, text || (r.currentBatch && !TERMINAL.has(r.status) ? `batch ${r.currentBatch} of ${data.batches.length}` : "-"));
    const hold = holding(r);
    stepMarker.hidden = !hold;
    if (hold) replace(stepMarker, stepText(r, data.batches.length, now()));
  }

  // Slow, stuck and dead look different: a live lease with recent progress is moving; a live
  // lease with no node moved for a while is slow or stuck at its agents; an expired lease is an
  // owner that stopped renewing (killed or cut off) until another daemon takes the release.
  function renderLiveness() {
    const r = data.release;
    const l = data.liveness;
    const lines = [];
    let verdict;
    if (TERMINAL.has(r.status)) {
      verdict = h("span", { dataset: { state: "ended" } }, `ended ${ago(r.finishedAt)}`);
    } else if (!l.owner) {
      verdict = h("span", { dataset: { state: "unowned" } }, r.status === "pending" ? "waiting to be claimed" : "no daemon owns it: waiting for one to claim it");
    } else if (l.leaseExpiresAt && Date.parse(l.leaseExpiresAt) <= now()) {
      verdict = h("span", { class: "warn", dataset: { state: "owner-lost" } }, `owner ${l.owner} stopped renewing its lease ${ago(l.leaseExpiresAt)}: another daemon takes the release over`);
    } else if (holding(r)) {
      // No node moves during a bake or at a gate: that is the plan, not a stall.
      const what = r.step.kind === "gate" ? `waits at the gate after batch ${r.step.batch} for a promote` : `bakes after batch ${r.step.batch}`;
      verdict = h("span", { dataset: { state: "holding" } }, `owner ${l.owner} is alive and ${what}`);
    } else if (r.status === "running" && l.lastProgressAt && now() - Date.parse(l.lastProgressAt) > STALLED_AFTER_SEC * 1000) {
      verdict = h("span", { class: "warn", dataset: { state: "stalled" } }, `owner ${l.owner} is alive, but no node moved for ${duration((now() - Date.parse(l.lastProgressAt)) / 1000)}: slow or stuck agents`);
    } else {
      verdict = h("span", { dataset: { state: "alive" } }, `owner ${l.owner} is alive`);
    }
    lines.push(h("dt", {}, "state"), h("dd", { id: "verdict" }, verdict));
    lines.push(h("dt", {}, "owning daemon"), h("dd", { id: "owner" }, l.owner || "-"));
    const expires = l.leaseExpiresAt ? Date.parse(l.leaseExpiresAt) - now() : null;
    lines.push(
      h("dt", {}, "lease"),
      h("dd", { id: "lease" }, expires === null ? "-" : expires > 0 ? `expires in ${duration(expires / 1000)}` : `expired ${duration(-expires / 1000)} ago`),
    );
    lines.push(h("dt", {}, "last progress"), h("dd", { id: "last-progress" }, ago(l.lastProgressAt)));
    replace(liveness, h("h2", {}, "Liveness"), h("dl", { class: "facts" }, lines));
  }

  function renderVerbs() {
    const operator = me.role === "operator" || me.role === "admin";
    // The API lists the verbs that would change the release now; promote only while the
    // release holds at a bake or gate, offered twice: past this step, or past every step left.
    const button = (name, label, full = false) =>
      h("button", { type: "button", class: `verb ${name}`, dataset: { verb: full ? "promote-full" : name }, onclick: () => ask(name, full) }, label);
    replace(
      verbs,
      operator
        ? data.verbs.flatMap((name) =>
            name === "promote"
              ? [button(name, "Promote"), button(name, "Promote, skip all remaining steps", true)]
              : [button(name, name[0].toUpperCase() + name.slice(1))],
          )
        : h("span", { class: "muted" }, `signed in as ${me.role}: no verbs`),
    );
  }

  function renderBatches() {
    const step = data.release.step;
    replace(
      batches,
      h("h2", {}, "Batches"),
      data.batches.map((batch) => {
        const found = counts(batch.nodes);
        const row = h(
          "div",
          { class: "batch", dataset: { batch: batch.batch } },
          h("strong", {}, `batch ${batch.batch}`),
          batchBar(batch.nodes),
          h("span", { class: "counts" }, NODE_STATES.filter((s) => found[s]).map((s) => `${s} ${found[s]}`).join(" · "), ` of ${batch.nodes.length}`),
        );
        // The bake or gate the release holds at, under the batch it follows.
        return step && step.batch === batch.batch ? [row, stepMarker] : row;
      }),
    );
  }

  function renderFailures() {
    const groups = new Map();
    for (const node of allNodes) {
      if (node.status !== "failed") continue;
      const kind = node.errorKind || "other";
      if (!groups.has(kind)) groups.set(kind, []);
      groups.get(kind).push(node);
    }
    if (!groups.size) return replace(failures);
    replace(
      failures,
      h("h2", {}, "Failures by kind"),
      h(
        "table",
        { id: "failure-kinds" },
        h("thead", {}, h("tr", {}, ["Kind", "Nodes", "Example", ""].map((t) => h("th", {}, t)))),
        h(
          "tbody",
          {},
          [...groups].sort((a, b) => b[1].length - a[1].length).map(([kind, nodes]) =>
            h(
              "tr",
              { dataset: { kind } },
              h("td", {}, KIND_NAMES[kind] || kind),
              h("td", {}, String(nodes.length)),
              h("td", { class: "error" }, `${nodes[0].nodeName}: ${nodes[0].errorMsg}`),
              h("td", {}, h("button", { type: "button", onclick: () => setFilter({ status: "failed", kind }) }, "show")),
            ),
          ),
        ),
      ),
    );
  }

  function filtered() {
    const text = filter.text.toLowerCase();
    return allNodes.filter(
      (n) =>
        (!filter.status || n.status === filter.status) &&
        (!filter.batch || String(n.batch) === filter.batch) &&
        (!filter.kind || n.errorKind === filter.kind) &&
        (!text || n.nodeName.toLowerCase().includes(text) || n.agent.includes(text) || (n.errorMsg || "").toLowerCase().includes(text)),
    );
  }

  function renderNodes() {
    const shown = filtered();
    const { page, start, pages } = pageOf(shown, filter, NODES_PER_PAGE);
    replace(
      nodesBody,
      page.map((n) =>
        h(
          "tr",
          { dataset: { nodeId: n.nodeId, status: n.status } },
          h("td", {}, String(n.batch)),
          h("td", {}, n.nodeName),
          h("td", {}, status(n.status)),
          h("td", {}, n.agent),
          h("td", {}, when(n.startedAt)),
          h("td", {}, when(n.finishedAt)),
          h("td", { class: "error" }, n.errorMsg || ""),
        ),
      ),
    );
    nodesInfo.textContent = shown.length
      ? `${start + 1}–${start + page.length} of ${shown.length} (page ${filter.page + 1} of ${pages})`
      : "no node matches";
  }

  function setFilter(change) {
    Object.assign(filter, change, { page: change.page ?? 0 });
    for (const [key, value] of Object.entries(filter)) {
      const input = view.querySelector(`[data-filter="${key}"]`);
      if (input && key !== "page") input.value = value;
    }
    renderNodes();
  }

  function eventRow(e) {
    const transition = e.fromStatus || e.toStatus ? `${e.fromStatus || "-"} → ${e.toStatus || "-"}` : "";
    return h(
      "tr",
      { dataset: { eventId: e.id } },
      h("td", {}, when(e.createdAt)),
      h("td", {}, e.batch ?? ""),
      h("td", {}, e.nodeId ?? ""),
      h("td", {}, transition),
      h("td", {}, e.message || ""),
      h("td", { class: "muted" }, e.actor ? actor(e.actor) : e.daemonId || ""),
    );
  }

  function addEvents(list) {
    const fresh = list.filter((e) => !seen.has(e.id));
    for (const e of fresh) seen.add(e.id);
    if (!fresh.length) return false;
    events.push(...fresh);
    events.sort((a, b) => a.id - b.id);
    replace(eventsBody, events.slice(-EVENTS_SHOWN).reverse().map(eventRow));
    return true;
  }

  function render() {
    allNodes = data.batches.flatMap((b) => b.nodes.map((n) => ({ ...n, batch: b.batch })));
    renderFacts();
    renderStep();
    renderLiveness();
    renderVerbs();
    renderBatches();
    renderFailures();
    renderNodes();
    scheduleLeaseCheck();
  }

  async function load() {
    data = await api.release(id);
    render();
    if (!TERMINAL.has(data.release.status) && (!stream || stream.closed)) startStream();
  }

  // No event comes while a release is stuck or holds at a step, and lease renewals are not
  // events: fetch once when five sixths of the lease shown have run (a live owner renews
  // every third of its lease, so by then it has), and, if it was not renewed, once more
  // after it ran out. A live owner never shows as lost in between.
  function scheduleLeaseCheck() {
    clearTimeout(leaseCheck);
    const l = data.liveness;
    if (TERMINAL.has(data.release.status) || !l.leaseExpiresAt) return;
    const left = Date.parse(l.leaseExpiresAt) - now();
    if (left <= 0) return; // expired: a takeover's claim is an event
    const early = left / 6;
    leaseCheck = setTimeout(() => refresh(), early >= 250 ? left - early : left + 1000);
  }

  // A bigger release costs more to fetch: at 10,000 nodes, at most one fetch every 2 s.
  const refresh = coalesced(load, Math.max(400, Math.min(3000, data.release.totalNodes / 5)));

  function startStream() {
    if (stream) stream.close();
    const after = events.length ? events[events.length - 1].id : 0;
    stream = follow(`/api/v1/releases/${id}/events?follow=true&afterId=${after}`, (event) => {
      if (addEvents([event])) refresh();
    }, () => refresh());
  }

  function ask(name, full = false) {
    const dialog = document.getElementById("confirm");
    const title = full ? "Promote, skipping all remaining steps," : name[0].toUpperCase() + name.slice(1);
    document.getElementById("confirm-title").textContent = `${title} release #${id}?`;
    document.getElementById("confirm-text").textContent = name === "promote" ? promoteText(data.release.step, full) : VERB_TEXT[name] || "";
    const reason = document.getElementById("confirm-reason");
    const to = document.getElementById("confirm-to");
    const error = document.getElementById("confirm-error");
    document.getElementById("confirm-to-label").hidden = name !== "rollback";
    reason.value = "";
    to.value = "";
    error.textContent = "";
    const form = document.getElementById("confirm-form");
    form.onsubmit = async (event) => {
      event.preventDefault();
      if (!reason.value.trim()) {
        error.textContent = "a reason is required";
        return;
      }
      const body = { reason: reason.value.trim() };
      if (name === "rollback" && to.value.trim()) body.toVersion = Number(to.value.trim());
      if (full) body.full = true;
      try {
        const answer = await api.verb(id, name, body);
        dialog.close();
        replace(
          flash,
          answer.message,
          answer.rollback ? h("span", {}, " → ", h("a", { href: `#/releases/${answer.rollback.id}`, id: "rollback-link" }, `rollback release #${answer.rollback.id}`)) : "",
        );
        await load();
      } catch (failure) {
        error.textContent = failure.message;
      }
    };
    document.getElementById("confirm-cancel").onclick = () => dialog.close();
    dialog.showModal();
    reason.focus();
  }

  // First the events so far, then the stream from the last of them.
  for (let after = 0; ; ) {
    const page = await api.events(id, after);
    addEvents(page.items);
    if (page.items.length < 1000) break;
    after = page.nextAfterId;
  }

  const option = (value, label) => h("option", { value }, label);
  replace(
    view,
    h("p", {}, h("a", { href: "#/" }, "‹ releases")),
    h("div", { class: "grid" }, facts, h("div", {}, liveness, h("div", { class: "card" }, h("h2", {}, "Verbs"), verbs, flash))),
    batches,
    failures,
    h("h2", {}, "Nodes"),
    h(
      "div",
      { class: "toolbar" },
      h("select", { "data-filter": "status", onchange: (e) => setFilter({ status: e.target.value }) }, option("", "any status"), NODE_STATES.map((s) => option(s, s))),
      h("select", { "data-filter": "batch", onchange: (e) => setFilter({ batch: e.target.value }) }, option("", "any batch"), data.batches.map((b) => option(String(b.batch), `batch ${b.batch}`))),
      h("select", { "data-filter": "kind", onchange: (e) => setFilter({ kind: e.target.value }) }, option("", "any failure"), Object.entries(KIND_NAMES).map(([k, t]) => option(k, t))),
      h("input", { "data-filter": "text", type: "search", placeholder: "name, address or error", oninput: (e) => setFilter({ text: e.target.value }) }),
      h("button", { type: "button", id: "nodes-prev", onclick: () => setFilter({ page: Math.max(0, filter.page - 1) }) }, "‹"),
      h("button", { type: "button", id: "nodes-next", onclick: () => setFilter({ page: filter.page + 1 }) }, "›"),
      nodesInfo,
    ),
    h("table", { id: "nodes" }, h("thead", {}, h("tr", {}, ["Batch", "Node", "Status", "Agent", "Started", "Finished", "Error"].map((t) => h("th", {}, t)))), nodesBody),
    h("h2", {}, "Events"),
    h("div", { id: "events" }, h("table", {}, h("thead", {}, h("tr", {}, ["Time", "Batch", "Node", "Transition", "Message", "By"].map((t) => h("th", {}, t)))), eventsBody)),
  );
  render();
  if (!TERMINAL.has(data.release.status)) startStream();
  const clock = setInterval(() => {
    renderStep();
    renderLiveness();
  }, 1000);

  return {
    dispose() {
      if (stream) stream.close();
      refresh.stop();
      clearInterval(clock);
      clearTimeout(leaseCheck);
    },
  };
}
