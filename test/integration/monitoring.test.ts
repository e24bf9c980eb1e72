/**
 * The shipped alerting rules and dashboard against a real daemon's /metrics:
 * every metric name, label and label value they use must be there, so that a
 * renamed metric cannot silently leave an alert that never fires or an empty
 * panel. Real images, real mounts, a real copy (so that every series exists).
 */
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { allQueries, groupingLabels, matchers, metricNames } from "../unit/monitoring.js";
import { Daemon, makeImage, stackAt, startReader, waitUntil, withRoot } from "./harness.js";

/** Labels Prometheus adds when it scrapes: never in the daemon's own text. */
const SCRAPE_LABELS = new Set(["instance", "job"]);

interface Sample {
  name: string;
  labels: Map<string, string>;
}

/** The samples of the Prometheus text format (version 0.0.4), names and labels. */
function samples(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+/.exec(line);
    assert.ok(m, `a sample line: ${line}`);
    const labels = new Map<string, string>();
    for (const [, k, v] of (m[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels.set(k as string, v as string);
    out.push({ name: m[1] as string, labels });
  }
  return out;
}

test("every metric, label and label value the alerting rules and the dashboard use is on a real daemon's /metrics", async (t) => {
  let text = "";
  await withRoot("monitoring", async (root, track) => {
    makeImage(root, path.join(root.data, "coco.sqfs"), { "data.bin": 2 * 1024 * 1024 });
    const d = track(Daemon.start(root, { capacity: "64MB", metrics_listen: "127.0.0.1:0" }));
    const serving = await d.waitForLog("serving metrics", (l) => l.msg === "serving metrics");
    // Read until cached: the dataset's series, both tiers, a finished copy, the tick histogram.
    const reader = startReader(path.join(root.mnt, "coco"));
    await waitUntil("coco cached", () => stackAt(path.join(root.mnt, "coco")).length === 2);
    await reader.stop();
    text = await (await fetch(`http://127.0.0.1:${String(serving.port)}/metrics`)).text();
    await d.stop();
  });

  const exposed = samples(text);
  const names = new Set(exposed.map((s) => s.name));
  const queries = allQueries();
  assert.ok(queries.length > 30, "the rules' and the dashboard's queries were found");

  const used = new Map<string, string[]>();
  for (const q of queries) for (const name of metricNames(q.expr)) used.set(name, [...(used.get(name) ?? []), q.where]);
  for (const [name, where] of [...used].sort()) {
    await t.test(`metric ${name}`, () => {
      assert.ok(names.has(name), `${name} (used by ${where.join(", ")}) is not on /metrics`);
    });
  }

  await t.test("label names and values in the selectors", () => {
    for (const q of queries) {
      for (const m of matchers(q.expr)) {
        if (SCRAPE_LABELS.has(m.label)) continue;
        const series = exposed.filter((s) => s.name === m.metric);
        assert.ok(series.some((s) => s.labels.has(m.label)), `${q.where}: ${m.metric} has no label ${m.label}`);
        // A literal value ("cache", or "slow|queued"): each must be a value the daemon writes.
        if (m.value.includes("$") || /[.*+?()[\]\\]/.test(m.value.replace(/\|/g, ""))) continue;
        for (const value of m.op === "=~" || m.op === "!~" ? m.value.split("|") : [m.value]) {
          assert.ok(series.some((s) => s.labels.get(m.label) === value), `${q.where}: ${m.metric}{${m.label}="${value}"} is not on /metrics`);
        }
      }
    }
  });

  await t.test("labels of by (...) and on (...)", () => {
    const labels = new Set(exposed.flatMap((s) => [...s.labels.keys()]));
    for (const q of queries) {
      for (const label of groupingLabels(q.expr)) {
        assert.ok(SCRAPE_LABELS.has(label) || labels.has(label), `${q.where}: no metric has a label ${label}`);
      }
    }
  });
});
