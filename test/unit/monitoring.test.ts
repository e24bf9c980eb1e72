/**
 * The Prometheus alerting rules and the Grafana dashboard shipped in
 * packaging/, judged by promtool (check rules, test rules) and by their
 * shape. That the metrics they name exist is checked against a real daemon
 * in test/integration/monitoring.test.ts.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { describe, test } from "node:test";
import { stringify } from "yaml";
import { Metrics } from "../../src/report/metrics.js";
import type { StatusReport } from "../../src/report/status.js";
import { tempDir } from "./helpers.js";
import { allQueries, findPromtool, loadDashboard, loadRules, loadRuleTests, metricNames, RULES_FILE, RULES_TEST_FILE, withGrafanaValues } from "./monitoring.js";

// Not a skip: .ci/setup installs it, and the rules must not ship unjudged.
const promtool = findPromtool();
const needPromtool = (): string => {
  if (promtool === undefined) assert.fail("promtool not found (PROMTOOL or the PATH): run .ci/setup, which unpacks Debian's prometheus package");
  return promtool;
};
const run = (args: string[]) => execFileSync(needPromtool(), args, { encoding: "utf8", timeout: 60_000 });

describe("alerting rules (packaging/prometheus/scratch_manager.rules.yml)", () => {
  const rules = loadRules();
  const tests = loadRuleTests();

  test("promtool check rules accepts them", () => {
    assert.match(run(["check", "rules", RULES_FILE]), new RegExp(`SUCCESS: ${rules.length} rules found`));
  });

  test("promtool test rules: every unit test passes", () => {
    assert.match(run(["test", "rules", RULES_TEST_FILE]), /SUCCESS/);
  });

  test("the alerts the issue asks for are there", () => {
    assert.deepEqual(rules.map((r) => r.alert).sort(), [
      "ScratchManagerCacheDeviceFailing",
      "ScratchManagerCacheDevicePredictedFailure",
      "ScratchManagerCacheFilesystemFull",
      "ScratchManagerCacheHoldsUnreadData",
      "ScratchManagerCacheReadOnly",
      "ScratchManagerCachedirUnavailable",
      "ScratchManagerCopiesFailing",
      "ScratchManagerDatadirUnavailable",
      "ScratchManagerDown",
      "ScratchManagerNotTicking",
      "ScratchManagerPeerChecksumConflict",
      "ScratchManagerPeerFillOff",
      "ScratchManagerPeerSendsWrongBytes",
      "ScratchManagerPinNotCached",
      "ScratchManagerProblems",
      "ScratchManagerSlowLayersDead",
    ]);
  });

  for (const rule of rules) {
    describe(rule.alert, () => {
      const cases = tests.flatMap((t) => t.alert_rule_test).filter((c) => c.alertname === rule.alert);
      const firing = cases.flatMap((c) => c.exp_alerts);
      test("has a for:, a severity and a summary that names the node", () => {
        assert.match(rule.for ?? "", /^\d+[smh]$/);
        assert.ok(["critical", "warning"].includes(rule.labels?.severity ?? ""), `severity ${String(rule.labels?.severity)}`);
        assert.match(rule.annotations?.summary ?? "", /\{\{ \$labels\.instance \}\}/);
        assert.ok((rule.annotations?.description ?? "").length > 0);
      });
      test("is unit-tested both not firing and firing", () => {
        assert.ok(cases.some((c) => c.exp_alerts.length === 0), "a case where it does not fire");
        assert.ok(firing.length > 0, "a case where it fires");
      });
      test("a summary names the dataset when the alert is about one", () => {
        for (const alert of firing) {
          if (alert.exp_labels.dataset === undefined) continue;
          assert.match(rule.annotations?.summary ?? "", /\{\{ \$labels\.dataset \}\}/);
          assert.ok(alert.exp_annotations.summary?.includes(alert.exp_labels.dataset), "the test's summary has the dataset's name");
        }
        for (const alert of firing) assert.ok(alert.exp_annotations.summary?.includes(alert.exp_labels.instance ?? "?"), "the test's summary has the node's name");
      });
    });
  }
});

describe("Grafana dashboard (packaging/grafana/scratch_manager.json)", () => {
  const dashboard = loadDashboard();
  const panels = dashboard.panels.filter((p) => p.type !== "row");

  test("one node or the fleet: an instance variable, several values or All; a datasource variable", () => {
    const vars = new Map(dashboard.templating.list.map((v) => [v.name, v]));
    assert.equal(vars.get("datasource")?.type, "datasource");
    assert.equal(vars.get("instance")?.multi, true);
    assert.equal(vars.get("instance")?.includeAll, true);
    assert.ok(dashboard.uid && dashboard.title);
  });

  test("every panel has a title, a description and queries on the chosen data source", () => {
    for (const p of panels) {
      assert.ok(p.title && p.description, `panel ${p.title}`);
      assert.ok((p.targets ?? []).length > 0, `panel ${p.title} has queries`);
      for (const t of p.targets ?? []) assert.equal(t.datasource?.uid, "${datasource}", `panel ${p.title}`);
      for (const t of p.targets ?? []) assert.match(t.expr, /instance=~"\$instance"/, `panel ${p.title} follows the node selection`);
    }
  });

  test("panels fit the 24-column grid without overlapping", () => {
    const cells = new Set<string>();
    for (const p of dashboard.panels) {
      const { x, y, w, h } = p.gridPos;
      assert.ok(x >= 0 && w > 0 && x + w <= 24, `panel ${p.title}: x ${x} w ${w}`);
      for (let i = x; i < x + w; i++) {
        for (let j = y; j < y + h; j++) {
          assert.ok(!cells.has(`${i},${j}`), `panel ${p.title} overlaps another at ${i},${j}`);
          cells.add(`${i},${j}`);
        }
      }
    }
  });

  test("it shows what the issue lists: reads per tier, cache use and capacity, copies and throughput, refused images, datadir", () => {
    const used = new Set(panels.flatMap((p) => (p.targets ?? []).flatMap((t) => metricNames(t.expr))));
    for (const name of [
      "scratch_manager_dataset_read_bytes_total",
      "scratch_manager_cache_used_bytes",
      "scratch_manager_cache_capacity_bytes",
      "scratch_manager_copies_started_total",
      "scratch_manager_copies_failed_total",
      "scratch_manager_copy_bytes_total",
      "scratch_manager_refused_images",
      "scratch_manager_datadir_up",
    ]) {
      assert.ok(used.has(name), `a panel uses ${name}`);
    }
  });

  test("promtool parses every query of the dashboard and of its variables (as recording rules)", async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const queries = allQueries().filter((q) => !q.where.startsWith("rule "));
      const file = path.join(dir, "dashboard-queries.yml");
      await writeFile(file, stringify({ groups: [{ name: "dashboard", rules: queries.map((q, i) => ({ record: `dashboard:query_${i}`, expr: withGrafanaValues(q.expr) })) }] }));
      assert.match(run(["check", "rules", file]), new RegExp(`SUCCESS: ${queries.length} rules found`));
    } finally {
      await cleanup();
    }
  });
});

test("the problems gauge counts what the status report lists under problems", async () => {
  const metrics = new Metrics();
  const report: StatusReport = {
    version: 1,
    pid: 1,
    writtenAt: 0,
    intervalSeconds: 5,
    periodSeconds: 1200,
    datasets: [],
    refused: [],
    cache: { dir: "/c", usedBytes: 0, capacityBytes: 1, ghostBytes: 0, fsTotalBytes: 1, fsFreeBytes: 1 },
    cacheBytesServed: 0,
    copies: { started: 0, finished: 0, failed: 0, cancelled: 0, bytes: 0 },
    tick: { count: 1, ms: 1 },
    problems: ['pinned dataset "x" does not exist', "pins exceed the cache: y (1 GiB) not cached"],
  };
  metrics.update(report);
  assert.match(await metrics.text(), /^scratch_manager_problems 2$/m);
  metrics.update({ ...report, problems: [] });
  assert.match(await metrics.text(), /^scratch_manager_problems 0$/m);
});
