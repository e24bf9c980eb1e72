/**
 * What the shipped Prometheus rules and Grafana dashboard ask of the
 * metrics: their expressions, and the metric names, label names and label
 * values in them. Shared by the unit tests (promtool, shape) and the
 * integration test that checks them against a real daemon's /metrics. Not a
 * test file itself.
 */
import { accessSync, constants, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parse } from "yaml";

const TOP = fileURLToPath(new URL("../../../", import.meta.url));
export const RULES_FILE = path.join(TOP, "packaging/prometheus/scratch_manager.rules.yml");
export const RULES_TEST_FILE = path.join(TOP, "test/prometheus/scratch_manager.rules.test.yml");
export const DASHBOARD_FILE = path.join(TOP, "packaging/grafana/scratch_manager.json");

export interface AlertRule {
  alert: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

export function loadRules(): AlertRule[] {
  const doc = parse(readFileSync(RULES_FILE, "utf8")) as { groups: { name: string; rules: AlertRule[] }[] };
  return doc.groups.flatMap((g) => g.rules);
}

export interface RuleTestGroup {
  name: string;
  alert_rule_test: { eval_time: string; alertname: string; exp_alerts: { exp_labels: Record<string, string>; exp_annotations: Record<string, string> }[] }[];
}

export function loadRuleTests(): RuleTestGroup[] {
  return (parse(readFileSync(RULES_TEST_FILE, "utf8")) as { tests: RuleTestGroup[] }).tests;
}

export interface Panel {
  type: string;
  title: string;
  description?: string;
  datasource?: { type: string; uid: string };
  gridPos: { h: number; w: number; x: number; y: number };
  targets?: { expr: string; refId: string; datasource?: { uid: string } }[];
}

export interface Dashboard {
  uid: string;
  title: string;
  panels: Panel[];
  templating: { list: { name: string; type: string; multi?: boolean; includeAll?: boolean; query?: string | { query: string } }[] };
}

export function loadDashboard(): Dashboard {
  return JSON.parse(readFileSync(DASHBOARD_FILE, "utf8")) as Dashboard;
}

export interface Query {
  /** Where it comes from: "rule X", "panel Y", "variable Z". */
  where: string;
  expr: string;
}

/** label_values(SELECTOR, LABEL), Grafana's variable query: the selector is PromQL. */
function labelValuesSelector(query: string): string {
  const m = /^label_values\((.*),\s*\w+\)$/.exec(query.trim());
  return m ? (m[1] as string) : query;
}

/** Every PromQL expression of the rules and the dashboard (its panels and its variables). */
export function allQueries(): Query[] {
  const rules = loadRules().map((r) => ({ where: `rule ${r.alert}`, expr: r.expr }));
  const dashboard = loadDashboard();
  const panels = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => ({ where: `panel "${p.title}" ${t.refId}`, expr: t.expr })));
  const variables = dashboard.templating.list
    .filter((v) => v.type === "query" && v.query !== undefined)
    .map((v) => ({ where: `variable ${v.name}`, expr: labelValuesSelector(typeof v.query === "string" ? v.query : (v.query as { query: string }).query) }));
  return [...rules, ...panels, ...variables];
}

/** Grafana's variables replaced by what Grafana would put there, so that promtool can parse the expression. */
export function withGrafanaValues(expr: string): string {
  return expr
    .replace(/\$__rate_interval|\$__interval|\$__range/g, "5m")
    .replace(/\$\{?(instance|dataset)\}?/g, ".*");
}

export function metricNames(expr: string): string[] {
  return [...new Set(expr.match(/\bscratch_manager_[a-zA-Z0-9_]+/g) ?? [])];
}

export interface Matcher {
  metric: string;
  label: string;
  op: string;
  value: string;
}

/** The label matchers of each selector on one of our metrics: scratch_manager_x{tier="cache", state=~"slow|queued"}. */
export function matchers(expr: string): Matcher[] {
  const out: Matcher[] = [];
  for (const [, metric, body] of expr.matchAll(/\b(scratch_manager_[a-zA-Z0-9_]+)\{([^}]*)\}/g)) {
    for (const [, label, op, value] of (body as string).matchAll(/(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"/g)) {
      out.push({ metric: metric as string, label: label as string, op: op as string, value: value as string });
    }
  }
  return out;
}

/** Label names in by (...), without (...), on (...), ignoring (...), group_left (...), group_right (...). */
export function groupingLabels(expr: string): string[] {
  const out = new Set<string>();
  for (const [, list] of expr.matchAll(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)/g)) {
    for (const label of (list as string).split(",").map((l) => l.trim()).filter(Boolean)) out.add(label);
  }
  return [...out];
}

/** promtool, from $PROMTOOL or the PATH (.ci/setup links Debian's). */
export function findPromtool(): string | undefined {
  const candidates = process.env.PROMTOOL ? [process.env.PROMTOOL] : (process.env.PATH ?? "").split(":").filter(Boolean).map((d) => path.join(d, "promtool"));
  return candidates.find((file) => {
    try {
      accessSync(file, constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}
