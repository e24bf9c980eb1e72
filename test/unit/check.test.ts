/** `scratch_manager check`: the configuration and the machine, checked without starting. */
import assert from "node:assert/strict";
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { test } from "node:test";
import { checkFindings, renderFindings } from "../../src/commands/check.js";
import { run as realRun, type Runner } from "../../src/lib/exec.js";
import { tempDir } from "./helpers.js";

async function setup(extra = ""): Promise<{ conf: string; dir: string; cleanup: () => Promise<void> }> {
  const { dir, cleanup } = await tempDir();
  for (const d of ["data", "cache", "mnt"]) await mkdir(path.join(dir, d));
  await writeFile(path.join(dir, "data", "coco.sqfs"), "x");
  const conf = path.join(dir, "scratch_manager.conf");
  await writeFile(conf, `datadir = ${dir}/data\ncachedir = ${dir}/cache\nmountdir = ${dir}/mnt\ncapacity = 1MB\n${extra}`);
  return { conf, dir, cleanup };
}

const levels = (findings: { level: string; what: string }[]) => Object.fromEntries(findings.map((f) => [f.what.replace(/ .*/, ""), f.level]));

test("a valid configuration on this machine: every finding ok, datadir's images counted", async () => {
  const { conf, cleanup } = await setup();
  try {
    const findings = await checkFindings(conf);
    assert.deepEqual(Object.values(levels(findings)).filter((l) => l === "error"), [], renderFindings(findings, false));
    assert.match(findings.find((f) => f.what.startsWith("datadir"))?.detail ?? "", /^1 image file\(s\)/);
    assert.match(renderFindings(findings, false), /\nok, \d warning\(s\)\n$/);
    assert.equal(renderFindings(findings.filter((f) => f.level === "ok"), true), "", "--quiet prints nothing when all is well");
  } finally {
    await cleanup();
  }
});

test("an invalid configuration is one error naming the file and line; nothing else is looked at", async () => {
  const { conf, cleanup } = await setup("period = soon\n");
  try {
    const findings = await checkFindings(conf);
    assert.equal(findings.length, 1);
    assert.equal(findings[0]?.level, "error");
    assert.match(findings[0]?.detail ?? "", new RegExp(`^${conf.replace(/[.]/g, "\\.")}:5: period = "soon" is not valid`));
  } finally {
    await cleanup();
  }
});

test("missing programs are an error; a capacity larger than cachedir's file system a warning (the daemon runs, bounded by the free space)", async () => {
  const { conf, cleanup } = await setup("capacity = 1000000TB\n");
  try {
    const findings = await checkFindings(conf, { envPath: "/nonexistent" });
    const l = levels(findings);
    assert.equal(l.capacity, "warning");
    assert.equal(l.programs, "error");
    assert.match(findings.find((f) => f.what === "programs")?.detail ?? "", /^mount, umount, losetup, find, stat, cp not found on PATH$/);
    assert.match(renderFindings(findings, true), /^warning capacity /m);
    assert.match(renderFindings(findings, true), /^error {3}programs: /m);
  } finally {
    await cleanup();
  }
});

test("a cachedir on a network file system is an error (the mount table, as findmnt reports it, says nfs4)", async () => {
  const { conf, cleanup } = await setup();
  try {
    const run: Runner = (file, args, options) => (file === "findmnt" ? Promise.resolve({ stdout: "nfs4 filer:/export\n", stderr: "", ms: 1 }) : realRun(file, args, options));
    const findings = await checkFindings(conf, { run });
    const cache = findings.find((f) => f.what.startsWith("cachedir"));
    assert.equal(cache?.level, "error");
    assert.match(cache?.detail ?? "", /is on nfs4 \(filer:\/export\), not a local disk/);
  } finally {
    await cleanup();
  }
});
