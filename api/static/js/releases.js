// The releases, newest first: status, version, scope, progress, age, who created it.

import * as api from "./api.js";
import { actor, duration, h, replace, status } from "./dom.js";
import { coalesced, follow } from "./live.js";
import { stepBrief } from "./step.js";

const PAGE_SIZE = 50;

export function progress(release) {
  const total = release.totalNodes || 0;
  const part = (count, kind) =>
    total && count ? h("span", { class: kind, style: `width:${(100 * count) / total}%` }) : null;
  return h(
    "div",
    { class: "bar", title: `${release.successNodes}/${total} succeeded` },
    part(release.successNodes, "success"),
    part(release.failedNodes, "failed"),
    part(release.skippedNodes, "skipped"),
    part(release.cancelledNodes, "cancelled"),
  );
}

const now = () => Date.now() + api.serverSkew();

function ageOf(iso) {
  return duration((now() - Date.parse(iso)) / 1000);
}

export async function releasesView(view, page) {
  let data = null;
  const body = h("tbody");
  const footer = h("p", { class: "muted" });

  async function load() {
    data = await api.releases(page, PAGE_SIZE);
    render();
  }

  function render() {
    replace(
      body,
      data.items.map((item) =>
        h(
          "tr",
          { dataset: { releaseId: item.id, status: item.status } },
          h("td", {}, h("a", { href: `#/releases/${item.id}` }, `#${item.id}`)),
          h(
            "td",
            {},
            status(item.status),
            item.cancelling ? " cancelling" : "",
            h("span", { class: "step-brief muted" }, stepBrief(item, now())),
          ),
          h(
            "td",
            {},
            String(item.version),
            item.configVersion !== item.version ? ` (config ${item.configVersion})` : "",
            item.rollbackOf ? h("span", { class: "muted" }, ` rollback of #${item.rollbackOf}`) : "",
          ),
          h("td", {}, item.scope || h("span", { class: "muted" }, "all"), " · ", item.target),
          h(
            "td",
            { class: "progress" },
            progress(item),
            h(
              "span",
              { class: "muted" },
              `${item.successNodes}/${item.totalNodes} ok`,
              item.failedNodes ? `, ${item.failedNodes} failed` : "",
              item.skippedNodes ? `, ${item.skippedNodes} skipped` : "",
            ),
          ),
          h("td", { class: "age", dataset: { created: item.createdAt } }, ageOf(item.createdAt)),
          h("td", { class: "by" }, actor(item.createdBy)),
          h("td", { class: "muted" }, item.reason || ""),
        ),
      ),
    );
    const pages = Math.max(1, Math.ceil(data.total / data.pageSize));
    replace(
      footer,
      page > 1 ? h("a", { href: `#/?page=${page - 1}` }, "‹ newer") : null,
      ` page ${page} of ${pages}, ${data.total} releases `,
      page < pages ? h("a", { href: `#/?page=${page + 1}` }, "older ›") : null,
    );
  }

  await load();
  replace(
    view,
    h("h1", {}, "Releases"),
    h(
      "table",
      { id: "releases" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ["ID", "Status", "Version", "Scope", "Progress", "Age", "Created by", "Reason"].map((t) =>
            h("th", {}, t),
          ),
        ),
      ),
      body,
    ),
    footer,
  );

  // Any event of any release may change a row of this page (or add one): refetch the page,
  // at most every 400 ms, when events arrive; ages tick on a local clock.
  const refresh = coalesced(load);
  const stream = follow("/api/v1/events?follow=true", refresh);
  const clock = setInterval(() => {
    for (const cell of body.querySelectorAll("td.age")) {
      cell.textContent = ageOf(cell.dataset.created);
    }
    for (const row of body.querySelectorAll("tr[data-release-id]")) {
      const item = data.items.find((r) => String(r.id) === row.dataset.releaseId);
      if (item) row.querySelector(".step-brief").textContent = stepBrief(item, now());
    }
  }, 1000);
  return {
    dispose() {
      stream.close();
      refresh.stop();
      clearInterval(clock);
    },
  };
}
