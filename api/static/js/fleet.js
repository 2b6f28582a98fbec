// The fleet: which config version each node runs, per label (scope), and where it drifts from
// the newest config that succeeded.

import * as api from "./api.js";
import { h, pageOf, replace, status, when } from "./dom.js";
import { coalesced, follow } from "./live.js";

const NODES_PER_PAGE = 100;

function versionBar(versions, total) {
  return h(
    "div",
    { class: "bar" },
    versions.map((v, i) =>
      h("span", {
        class: i === 0 ? "success" : v.configVersion === null ? "pending" : "skipped",
        style: `width:${(100 * v.nodes) / Math.max(1, total)}%`,
        title: `config ${v.configVersion ?? "none"}: ${v.nodes}`,
      }),
    ),
  );
}

const versionText = (versions) =>
  versions.map((v) => `config ${v.configVersion ?? "none"}: ${v.nodes}`).join(" · ");

export async function fleetView(view) {
  const filter = { text: "", drift: false, page: 0 };
  let fleet = null;
  let nodes = [];
  const summary = h("div", { class: "card", id: "fleet-summary" });
  const labels = h("div", { id: "fleet-labels" });
  const body = h("tbody");
  const info = h("span", { class: "muted", id: "fleet-info" });

  async function load() {
    [fleet, nodes] = await Promise.all([api.fleet(), api.nodes().then((d) => d.items)]);
    render();
  }

  function render() {
    const newest = fleet.newestSucceeded;
    const drifting = new Set(fleet.differing.map((n) => n.nodeId));
    replace(
      summary,
      h("h1", {}, "Fleet"),
      h("p", {}, `${fleet.totalNodes} nodes · ${versionText(fleet.versions)}`),
      versionBar(fleet.versions, fleet.totalNodes),
      h(
        "p",
        { id: "drift" },
        newest === null
          ? "no release has succeeded yet"
          : fleet.differing.length
            ? h("span", { class: "warn" }, `${fleet.differing.length} node(s) drift from config ${newest.configVersion} (release #${newest.releaseId})`)
            : `all nodes run config ${newest.configVersion} (release #${newest.releaseId})`,
      ),
    );
    replace(
      labels,
      fleet.byLabel.length
        ? [
            h("h2", {}, "By label (scope)"),
            h(
              "table",
              { id: "fleet-by-label" },
              h("thead", {}, h("tr", {}, ["Label", "Config versions", ""].map((t) => h("th", {}, t)))),
              h(
                "tbody",
                {},
                fleet.byLabel.map((l) => {
                  const total = l.versions.reduce((sum, v) => sum + v.nodes, 0);
                  return h("tr", {}, h("td", {}, l.label), h("td", {}, versionText(l.versions)), h("td", {}, versionBar(l.versions, total)));
                }),
              ),
            ),
          ]
        : null,
    );
    const text = filter.text.toLowerCase();
    const shown = nodes.filter(
      (n) =>
        (!filter.drift || drifting.has(n.id)) &&
        (!text || n.name.toLowerCase().includes(text) || n.mainIp.includes(text) || Object.entries(n.labels || {}).some(([k, v]) => `${k}=${v}`.includes(text))),
    );
    const { page, start } = pageOf(shown, filter, NODES_PER_PAGE);
    replace(
      body,
      page.map((n) =>
        h(
          "tr",
          { dataset: { nodeId: n.id, drift: drifting.has(n.id) ? "yes" : "no" } },
          h("td", {}, n.name),
          h("td", {}, `${n.mainIp}:${n.agentPort}`),
          h("td", {}, status(n.status), n.enabled ? "" : " disabled"),
          h("td", { class: drifting.has(n.id) ? "warn" : "" }, n.appliedVersion ?? "none"),
          h("td", {}, when(n.appliedAt)),
          h("td", {}, Object.entries(n.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ")),
        ),
      ),
    );
    info.textContent = shown.length ? `${start + 1}–${start + page.length} of ${shown.length}` : "no node matches";
  }

  const set = (change) => {
    Object.assign(filter, change, { page: change.page ?? 0 });
    render();
  };

  await load();
  replace(
    view,
    summary,
    labels,
    h("h2", {}, "Nodes"),
    h(
      "div",
      { class: "toolbar" },
      h("input", { type: "search", placeholder: "name, address or label", oninput: (e) => set({ text: e.target.value }) }),
      h("label", {}, h("input", { type: "checkbox", id: "drift-only", onchange: (e) => set({ drift: e.target.checked }) }), " drifting only"),
      h("button", { type: "button", onclick: () => set({ page: Math.max(0, filter.page - 1) }) }, "‹"),
      h("button", { type: "button", onclick: () => set({ page: filter.page + 1 }) }, "›"),
      info,
    ),
    h("table", { id: "fleet-nodes" }, h("thead", {}, h("tr", {}, ["Node", "Agent", "Status", "Config", "Applied", "Labels"].map((t) => h("th", {}, t)))), body),
  );

  // A node's applied version changes when it succeeds in a release: an event.
  const refresh = coalesced(load, 1000);
  const stream = follow("/api/v1/events?follow=true", refresh);
  return {
    dispose() {
      stream.close();
      refresh.stop();
    },
  };
}
