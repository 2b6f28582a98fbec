// The step a release is at (the API's ``release.step``): a batch, a bake with the time left
// until its end (counted on the server's clock), or a gate that waits for a promote.

import { duration, h, when } from "./dom.js";

// A strategy's plan as text: "1 · bake 5m 0s · 10% · gate · 100%".
export function planText(release) {
  const plan = release.strategy ? release.strategy.plan : release.plan;
  return plan
    .map((step) => {
      if (step !== null && typeof step === "object") {
        if ("pause" in step) return step.pause === null ? "gate" : `bake ${duration(step.pause)}`;
        const budget = [];
        if (step.maxFailures !== undefined) budget.push(`max failures ${step.maxFailures}`);
        if (step.maxFailurePercent !== undefined) budget.push(`max ${step.maxFailurePercent}% failed`);
        return budget.length ? `${String(step.batch)} (${budget.join(", ")})` : String(step.batch);
      }
      return String(step);
    })
    .join(" · ");
}

// The release holds at a bake or a gate (running, not yet promoted past it).
export const holding = (release) =>
  release.status === "running" && !release.cancelling && release.step !== null &&
  release.step !== undefined && release.step.kind !== "batch" && !release.step.promoted;

// Seconds left of the bake ``step`` at ``now`` (ms, server clock); null without an end.
export function bakeLeft(step, now) {
  return step.until ? (Date.parse(step.until) - now) / 1000 : null;
}

// What the step of ``release`` says at ``now`` (ms, server clock), as nodes; null when the
// release has no step to show (no pauses in its plan, or ended).
export function stepText(release, batches, now) {
  const step = release.step;
  if (!step) return null;
  const text = stepNow(step, batches, now);
  // A paused release holds wherever it is, and takes no promote until it is resumed.
  return release.status === "paused" ? [text, h("span", { class: "muted" }, " · release paused: resume it first")] : text;
}

function stepNow(step, batches, now) {
  const after = `after batch ${step.batch}`;
  if (step.kind === "batch") {
    return h("span", { dataset: { kind: "batch" } }, `batch ${step.batch} of ${batches}`);
  }
  if (step.promoted) {
    return h("span", { dataset: { kind: step.kind } }, `${step.kind} ${after}: promoted, going on`);
  }
  if (step.kind === "gate") {
    return h(
      "span",
      { class: "hold gate", dataset: { kind: "gate" } },
      `gate ${after}: `,
      h("strong", { class: "step-state" }, "waiting for promote"),
    );
  }
  const left = bakeLeft(step, now);
  if (left === null) return h("span", { class: "hold bake", dataset: { kind: "bake" } }, `bake ${after}`);
  return h(
    "span",
    { class: "hold bake", dataset: { kind: "bake" } },
    `bake ${after}: `,
    h("strong", { class: "step-state" }, left > 0 ? `${duration(left)} left` : "ending"),
    ` (until ${when(step.until)})`,
  );
}

// The same, in one line of the release list ("gate: waiting for promote", "bake: 4m 10s left").
export function stepBrief(release, now) {
  if (!holding(release)) return "";
  if (release.step.kind === "gate") return "gate: waiting for promote";
  const left = bakeLeft(release.step, now);
  return left === null ? "bake" : `bake: ${left > 0 ? `${duration(left)} left` : "ending"}`;
}
