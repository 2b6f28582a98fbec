// The fleet: which config version each node runs, per label and per scope, and which nodes
// drift from the config of the newest successful release that included them.

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

// Releases that name no scope form one group (scope null), shown under this name; its row's
// data-scope is "" (a scope is never blank).
const NO_SCOPE = "(no scope)";
const scopeName = (scope) => scope ?? NO_SCOPE;
const expectedText = (d) =>
  `config ${d.expectedVersion} (release #${d.expectedRelease.releaseId}, ${scopeName(d.expectedRelease.scope)})`;

function scopeRow(s, show) {
  const newest = s.newestSucceeded;
  const names = s.differing.map((d) => d.nodeName).join(", ");
  const more = s.differingNodes - s.differing.length;
  return h(
    "tr",
    { dataset: { scope: s.scope ?? "", drifting: s.differingNodes } },
    h("td", {}, s.scope === null ? h("span", { class: "muted" }, NO_SCOPE) : s.scope),
    h("td", {}, s.releases),
    h("td", {}, newest === null ? "none succeeded" : h("a", { href: `#/releases/${newest.releaseId}` }, `#${newest.releaseId} · config ${newest.configVersion}`)),
    h("td", {}, newest === null ? "-" : `${s.runningConfig} of ${s.releaseNodes}`),
    h(
      "td",
      { class: s.differingNodes ? "warn" : "" },
      s.differingNodes
        ? [
            `${s.differingNodes} of ${s.expectedNodes}: ${names}${more > 0 ? ` and ${more} more` : ""} `,
            h("button", { type: "button", onclick: () => show(s.scope) }, "show"),
          ]
        : `none of ${s.expectedNodes}`,
    ),
  );
}

export async function fleetView(view) {
  // scope: undefined (every node) or a scope (null: no scope) whose drifting nodes are shown.
  const filter = { text: "", drift: false, scope: undefined, page: 0 };
  let fleet = null;
  let nodes = [];
  const summary = h("div", { class: "card", id: "fleet-summary" });
  const labels = h("div", { id: "fleet-labels" });
  const scopes = h("div", { id: "fleet-scopes" });
  const scopeInfo = h("span", { class: "muted", id: "fleet-scope-filter" });
  const body = h("tbody");
  const info = h("span", { class: "muted", id: "fleet-info" });

  async function load() {
    [fleet, nodes] = await Promise.all([api.fleet(), api.nodes().then((d) => d.items)]);
    render();
  }

  function render() {
    const newest = fleet.newestSucceeded;
    const drift = new Map(fleet.differing.map((d) => [d.nodeId, d]));
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
            ? h("span", { class: "warn" }, `${fleet.differing.length} node(s) drift from the config of their newest successful release`)
            : `no node drifts: each runs the config of its newest successful release (newest: config ${newest.configVersion}, release #${newest.releaseId})`,
      ),
      fleet.unreleasedNodes ? h("p", { class: "muted" }, `${fleet.unreleasedNodes} node(s) in no successful release: nothing expected of them`) : null,
    );
    replace(
      scopes,
      fleet.byScope.length
        ? [
            h("h2", {}, "By scope"),
            h(
              "table",
              { id: "fleet-by-scope" },
              h("thead", {}, h("tr", {}, ["Scope", "Releases", "Newest success", "Running its config", "Drifting"].map((t) => h("th", {}, t)))),
              h("tbody", {}, fleet.byScope.map((s) => scopeRow(s, (scope) => set({ scope, drift: true })))),
            ),
          ]
        : null,
    );
    scopeInfo.replaceChildren();
    if (filter.scope !== undefined)
      replace(scopeInfo, `drifting in ${scopeName(filter.scope)} `, h("button", { type: "button", onclick: () => set({ scope: undefined }) }, "all scopes"));
    replace(
      labels,
      fleet.byLabel.length
        ? [
            h("h2", {}, "By label"),
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
        (!filter.drift || drift.has(n.id)) &&
        (filter.scope === undefined || (drift.has(n.id) && drift.get(n.id).expectedRelease.scope === filter.scope)) &&
        (!text || n.name.toLowerCase().includes(text) || n.mainIp.includes(text) || Object.entries(n.labels || {}).some(([k, v]) => `${k}=${v}`.includes(text))),
    );
    const { page, start } = pageOf(shown, filter, NODES_PER_PAGE);
    replace(
      body,
      page.map((n) =>
        h(
          "tr",
          { dataset: { nodeId: n.id, drift: drift.has(n.id) ? "yes" : "no" } },
          h("td", {}, n.name),
          h("td", {}, `${n.mainIp}:${n.agentPort}`),
          h("td", {}, status(n.status), n.enabled ? "" : " disabled"),
          h("td", { class: drift.has(n.id) ? "warn" : "" }, n.appliedVersion ?? "none"),
          h("td", { class: drift.has(n.id) ? "warn" : "muted" }, drift.has(n.id) ? expectedText(drift.get(n.id)) : "not drifting"),
          h("td", {}, when(n.appliedAt)),
          h("td", {}, Object.entries(n.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ")),
        ),
      ),
    );
    info.textContent = shown.length ? `${start + 1}–${start + page.length} of ${shown.length}` : "no node matches";
  }

  const set = (change) => {
    Object.assign(filter, change, { page: change.page ?? 0 });
    const only = document.getElementById("drift-only");
    if (only) only.checked = filter.drift;
    render();
  };

  await load();
  replace(
    view,
    summary,
    scopes,
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
      scopeInfo,
    ),
    h("table", { id: "fleet-nodes" }, h("thead", {}, h("tr", {}, ["Node", "Agent", "Status", "Config", "Expected", "Applied", "Labels"].map((t) => h("th", {}, t)))), body),
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
