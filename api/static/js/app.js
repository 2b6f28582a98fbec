// The dashboard: sign-in, then three views chosen by the address's fragment:
// #/ (releases), #/releases/ID (one release), #/fleet (config versions across the fleet).

import * as api from "./api.js";
import { h, replace } from "./dom.js";
import { fleetView } from "./fleet.js";
import { releaseView } from "./release.js";
import { releasesView } from "./releases.js";

const session = { me: null, view: null };

const $ = (id) => document.getElementById(id);

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const release = hash.match(/^\/releases\/(\d+)$/);
  if (release) return (view, me) => releaseView(view, me, Number(release[1]));
  if (hash === "/fleet") return (view) => fleetView(view);
  const page = Number(new URLSearchParams(hash.split("?")[1] || "").get("page")) || 1;
  return (view) => releasesView(view, page);
}

async function show() {
  if (session.view) session.view.dispose();
  session.view = null;
  const view = $("view");
  replace(view, h("p", { class: "muted" }, "Loading…"));
  try {
    session.view = await route()(view, session.me);
  } catch (error) {
    if (error.status === 401) return signedOut();
    replace(view, h("p", { class: "error", role: "alert" }, error.message));
  }
}

function signedIn(me) {
  session.me = me;
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("sign-out").hidden = false;
  $("who").textContent = `${me.name} (${me.role})`;
  $("who").dataset.role = me.role;
  show();
}

function signedOut() {
  if (session.view) session.view.dispose();
  session.view = null;
  session.me = null;
  $("sign-in").hidden = false;
  $("nav").hidden = true;
  $("sign-out").hidden = true;
  $("who").textContent = "";
  replace($("view"));
  $("token").focus();
}

$("sign-in").addEventListener("submit", async (event) => {
  event.preventDefault();
  const field = $("token");
  $("sign-in-error").textContent = "";
  try {
    const me = await api.signIn(field.value.trim());
    field.value = "";
    signedIn(me);
  } catch (error) {
    $("sign-in-error").textContent = error.message;
  }
});

$("sign-out").addEventListener("click", async () => {
  await api.signOut().catch(() => {});
  signedOut();
});

window.addEventListener("hashchange", () => {
  if (session.me) show();
});

api.whoami().then(signedIn, signedOut);
