/**
 * Issue 21, placement: two Slurm nodes, each a network, UTS and mount
 * namespace of its own (test/slurm/multinode.ts), each with its own
 * scratch_manager daemon (slurm_node = auto) over its own mountdir and
 * cachedir and one shared datadir. Node 2 has alpha cached (pinned); node 1
 * does not. A job that names alpha in its comment (the shipped
 * job_submit.lua turns it into --prefer=ds_alpha) runs on node 2 while both
 * are free, its file read through node 2's cache. Once alpha is evicted on
 * node 2, the feature goes.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { CLI, Daemon, makeImage, waitUntil, withRoot, type TestRoot } from "../integration/harness.js";
import { MultiNodeCluster } from "./multinode.js";
import { missingPrograms } from "./processes.js";
import type { StatusReport } from "../../src/report/status.js";

const TOP = fileURLToPath(new URL("../../../", import.meta.url));
const MB = 1024 * 1024;

function nodeDirs(root: TestRoot, node: string): { cachedir: string; mountdir: string; state: string; run: string } {
  const base = path.join(root.root, node);
  const dirs = { cachedir: path.join(base, "cache"), mountdir: path.join(base, "mnt"), state: path.join(base, "state"), run: path.join(base, "run") };
  for (const d of Object.values(dirs)) mkdirSync(d, { recursive: true });
  return dirs;
}

test("placement: a job naming a dataset cached on node 2 but not on node 1, both free, runs on node 2 and reads it from node 2's cache; evicted, the feature goes", async () => {
  assert.deepEqual(missingPrograms(), [], "Slurm is not installed: run .ci/setup");
  await withRoot("placement", async (root, track) => {
    // The shipped job_submit.lua, reading the active features node 2's daemon writes (slurm_stage = features; on slurmctld's host in production).
    const lua = readFileSync(path.join(TOP, "packaging/slurm/job_submit.lua"), "utf8").replace('"/run/scratch_manager/slurm-features"', JSON.stringify(path.join(root.root, "node2", "run", "slurm-features")));
    const cluster = await MultiNodeCluster.start(path.join(root.root, "slurm"), 2, { jobSubmitLua: lua });
    try {
      makeImage(root, path.join(root.data, "alpha.sqfs"), { "data.bin": 2 * MB, "id.txt": "alpha" });
      makeImage(root, path.join(root.data, "beta.sqfs"), { "id.txt": "beta" });
      const configOf = (node: string) => path.join(root.root, node, "scratch_manager.conf");
      const writeConfig = (node: string, extra: Record<string, string>) => {
        const dirs = nodeDirs(root, node);
        writeFileSync(configOf(node), Daemon.standardConfig(root, { cachedir: dirs.cachedir, mountdir: dirs.mountdir, state_dir: dirs.state, runtime_dir: dirs.run, slurm_node: "auto", ...extra }));
      };
      const daemons = new Map<string, Daemon>();
      for (const node of cluster.nodes) {
        writeConfig(node.name, node.name === "node2" ? { pin: "alpha", slurm_stage: "features" } : {});
        // The daemon in the node's namespaces: its host name is the node's, its mounts are seen by the node's jobs, slurmctld is reached over the bridge.
        daemons.set(node.name, track(new Daemon(root, { args: ["--config", configOf(node.name), "--verbose"], wrap: ["nsenter", "-t", String(node.pid), "-n", "-u", "-m", "--"], env: { SLURM_CONF: cluster.conf, PATH: `${process.env.PATH ?? ""}:/usr/sbin:/sbin` } })));
      }
      await waitUntil("node2 advertises ds_alpha", () => cluster.features("node2").active.includes("ds_alpha"), 60_000, 500);
      assert.deepEqual(cluster.features("node1").active.filter((f) => f.startsWith("ds_")), [], "node1 holds nothing, advertises nothing");
      const statusOf = (node: string) => JSON.parse(cluster.inside(cluster.nodes.find((n) => n.name === node)?.pid as number, [process.execPath, CLI, "status", "--json", "--runtime-dir", nodeDirs(root, node).run])) as { slurm?: { node: string; features: string[]; calls: number } };
      await waitUntil("node2's status says what it told slurmctld", () => statusOf("node2").slurm?.features.join(",") === "ds_alpha", 10_000, 300);
      await waitUntil("the active features listed for job_submit.lua", () => existsSync(path.join(root.root, "node2", "run", "slurm-features")) && readFileSync(path.join(root.root, "node2", "run", "slurm-features"), "utf8") === "ds_alpha\n", 60_000, 500);

      // A few jobs, each while both nodes are free: every one goes where alpha is.
      const out = path.join(root.root, "jobs");
      mkdirSync(out, { recursive: true });
      for (let i = 0; i < 3; i++) {
        // The job reads alpha where its node mounts it (each node's mountdir is root/<node>/mnt).
        const id = cluster.sbatch(["--comment", "datasets:alpha", "--output", path.join(out, `job${i}.out`), "--wrap", `hostname; cat ${root.root}/$(hostname)/mnt/alpha/id.txt`]);
        await waitUntil(`job ${id} done`, () => cluster.jobs().find((j) => j.job_id === id)?.job_state === "COMPLETED", 60_000, 500);
        const job = cluster.jobs().find((j) => j.job_id === id);
        assert.equal((job as { nodes?: string } | undefined)?.nodes, "node2", `job ${id} ran on ${String((job as { nodes?: string } | undefined)?.nodes)}`);
        assert.equal(readFileSync(path.join(out, `job${i}.out`), "utf8"), "node2\nalpha", "it read alpha on node 2");
      }
      // A dataset no node holds: no preference is added (slurmctld would refuse a feature no node has), and the job runs.
      const beta = cluster.sbatch(["--comment", "datasets:beta", "--output", path.join(out, "beta.out"), "--wrap", "hostname"]);
      await waitUntil(`job ${beta} done`, () => cluster.jobs().find((j) => j.job_id === beta)?.job_state === "COMPLETED", 60_000, 500);
      // Without the comment the scheduler's own order stands (node1 first): the preference is what moved them.
      const plain = cluster.sbatch(["--output", path.join(out, "plain.out"), "--wrap", "hostname"]);
      await waitUntil(`job ${plain} done`, () => cluster.jobs().find((j) => j.job_id === plain)?.job_state === "COMPLETED", 60_000, 500);
      assert.equal(readFileSync(path.join(out, "plain.out"), "utf8").trim(), "node1");

      // Evicted on node 2 (the pin dropped by a reload, then `scratch_manager evict`): the feature goes, within the batching interval.
      const node2 = cluster.nodes.find((n) => n.name === "node2");
      assert.ok(node2);
      writeConfig("node2", { slurm_stage: "features" });
      daemons.get("node2")?.signal("SIGHUP");
      await daemons.get("node2")?.waitForLog("reloaded", (l) => l.msg === "configuration reloaded");
      cluster.inside(node2.pid, [process.execPath, CLI, "evict", "alpha", "--config", configOf("node2")], { timeoutMs: 60_000 });
      await waitUntil("node2 no longer advertises ds_alpha", () => !cluster.features("node2").active.includes("ds_alpha"), 90_000, 500);
      const calls = statusOf("node2").slurm?.calls ?? 0;
      assert.ok(calls <= 12, `calls to slurmctld stay few (${calls})`);
    } finally {
      const left = await cluster.stop();
      assert.deepEqual(left, [], "no Slurm process of the test was left to kill");
      assert.ok(!existsSync(`/proc/${cluster.ctlPid}`) || readFileSync(`/proc/${cluster.ctlPid}/stat`, "latin1").includes(") Z "), "the namespaces' holders are gone");
    }
  });
});

test("pre-staging: a job pending behind a long one, planned onto node 1, finds its dataset cached there when it starts, in the room of a dataset no job reads; the stager (on node 2) lists the queue once a round and hands node 1 its part over the signed peer channel", async () => {
  assert.deepEqual(missingPrograms(), [], "Slurm is not installed: run .ci/setup");
  await withRoot("staging", async (root, track) => {
    const cluster = await MultiNodeCluster.start(path.join(root.root, "slurm"), 2);
    try {
      makeImage(root, path.join(root.data, "alpha.sqfs"), { "data.bin": 2 * MB, "id.txt": "alpha" });
      makeImage(root, path.join(root.data, "beta.sqfs"), { "data.bin": 2 * MB, "id.txt": "beta" });
      // The fleet key, as the administrator makes it (peer fill's: the stager's requests are signed with it).
      mkdirSync(path.join(root.data, ".scratch_manager"), { recursive: true, mode: 0o755 });
      writeFileSync(path.join(root.data, ".scratch_manager", "peer.key"), randomBytes(32), { mode: 0o600 });
      const configOf = (node: string) => path.join(root.root, node, "scratch_manager.conf");
      const daemons = new Map<string, Daemon>();
      for (const node of cluster.nodes) {
        const dirs = nodeDirs(root, node.name);
        writeFileSync(
          configOf(node.name),
          Daemon.standardConfig(root, {
            cachedir: dirs.cachedir,
            mountdir: dirs.mountdir,
            state_dir: dirs.state,
            runtime_dir: dirs.run,
            // Room for one of the two datasets.
            capacity: "3MB",
            slurm_node: "auto",
            peer_listen: `${node.address}:9456`,
            peer_advertise: `${node.name}:9456`,
            ...(node.name === "node2" ? { slurm_stage: "yes" } : {}),
          }),
        );
        daemons.set(node.name, track(new Daemon(root, { args: ["--config", configOf(node.name), "--verbose"], wrap: ["nsenter", "-t", String(node.pid), "-n", "-u", "-m", "--"], env: { SLURM_CONF: cluster.conf, PATH: `${process.env.PATH ?? ""}:/usr/sbin:/sbin` } })));
      }
      const node1 = cluster.nodes.find((n) => n.name === "node1");
      assert.ok(node1);
      // Undefined until the daemon wrote its first status.
      const statusOf = (node: string): StatusReport | undefined => {
        try {
          return JSON.parse(cluster.inside(cluster.nodes.find((n) => n.name === node)?.pid as number, [process.execPath, CLI, "status", "--json", "--runtime-dir", nodeDirs(root, node).run])) as StatusReport;
        } catch {
          return undefined;
        }
      };
      await waitUntil("both daemons reporting", () => statusOf("node1") !== undefined && statusOf("node2") !== undefined, 60_000, 500);
      // Node 1's cache is full: beta, read there a while ago (the policy keeps what it cached while nothing else wants the room).
      await waitUntil("beta cached on node 1, read there", () => {
        cluster.inside(node1.pid, ["sh", "-c", `cat ${root.root}/node1/mnt/beta/data.bin > /dev/null 2>&1 || true`]);
        return statusOf("node1")?.datasets.find((d) => d.name === "beta")?.state === "cached";
      }, 60_000, 500);
      // Node 1 busy with a long job; the second job needs node 1 (and names alpha): the backfill scheduler plans it there, to start when the first ends.
      const out = path.join(root.root, "jobs");
      mkdirSync(out, { recursive: true });
      const long = cluster.sbatch(["--nodelist=node1", "--time=2", "--output", "/dev/null", "--wrap", "sleep 300"]);
      const mnt = `${root.root}/node1/mnt/alpha`;
      // At its start, the job says which device serves alpha (the top mount's loop device's backing file), then reads it.
      const next = cluster.sbatch(["--nodelist=node1", "--time=1", "--comment", "datasets:alpha", "--output", path.join(out, "next.out"), "--wrap", `cat /sys/block/$(basename $(findmnt -n -o SOURCE --mountpoint ${mnt} | tail -1))/loop/backing_file; cat ${mnt}/id.txt`]);
      await waitUntil("the long job running", () => cluster.jobs().find((j) => j.job_id === long)?.job_state === "RUNNING", 30_000, 500);
      assert.equal(cluster.jobs().find((j) => j.job_id === next)?.job_state, "PENDING");
      // Staged: node 1 caches alpha before the job starts, though nothing read it there.
      await waitUntil("alpha staged and cached on node 1", () => {
        const a = statusOf("node1")?.datasets.find((d) => d.name === "alpha");
        return a?.staged?.jobId === next && a.state === "cached";
      }, 90_000, 500);
      assert.notEqual(statusOf("node1")?.datasets.find((d) => d.name === "beta")?.state, "cached", "beta, read by no job now, made room for the job due on node 1");
      assert.equal(statusOf("node2")?.datasets.find((d) => d.name === "alpha")?.state, "slow", "node 2 stages nothing: no job is planned there");
      const stager = statusOf("node2")?.staging?.stager;
      assert.ok(stager && stager.listings >= 1 && stager.sent >= 1, `the stager listed the queue and handed a part: ${JSON.stringify(stager)}`);
      assert.ok(daemons.get("node1")?.logs.some((l) => l.msg.startsWith("staging 1 datasets") && String(l.by).startsWith("node2:")), "node 1 was handed its part by node 2, signed");
      // The long job ends early: the next one starts, and alpha is served by node 1's cache from its first read.
      cluster.slurm("scancel", [String(long)]);
      await waitUntil("the staged job done", () => cluster.jobs().find((j) => j.job_id === next)?.job_state === "COMPLETED", 60_000, 500);
      const [device, id] = readFileSync(path.join(out, "next.out"), "utf8").trim().split("\n");
      assert.equal(id, "alpha");
      assert.equal(device, path.join(nodeDirs(root, "node1").cachedir, "alpha.sqfs"), "at its start, alpha's top layer was node 1's cached copy");
      await waitUntil("counted as a hit", () => (statusOf("node1")?.staging?.hits ?? 0) >= 1, 60_000, 500);
      assert.equal(statusOf("node1")?.staging?.misses, 0);
    } finally {
      const left = await cluster.stop();
      assert.deepEqual(left.filter((p) => !p.cmd.includes("sleep 300")), [], "no Slurm process of the test was left to kill");
    }
  });
});
