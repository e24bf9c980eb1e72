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
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { CLI, Daemon, makeImage, waitUntil, withRoot, type TestRoot } from "../integration/harness.js";
import { missingPrograms } from "./cluster.js";
import { MultiNodeCluster } from "./multinode.js";

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
    const cluster = await MultiNodeCluster.start(path.join(root.root, "slurm"), 2, { jobSubmitLua: readFileSync(path.join(TOP, "packaging/slurm/job_submit.lua"), "utf8") });
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
        writeConfig(node.name, node.name === "node2" ? { pin: "alpha" } : {});
        // The daemon in the node's namespaces: its host name is the node's, its mounts are seen by the node's jobs, slurmctld is reached over the bridge.
        daemons.set(node.name, track(new Daemon(root, { args: ["--config", configOf(node.name), "--verbose"], wrap: ["nsenter", "-t", String(node.pid), "-n", "-u", "-m", "--"], env: { SLURM_CONF: cluster.conf, PATH: `${process.env.PATH ?? ""}:/usr/sbin:/sbin` } })));
      }
      await waitUntil("node2 advertises ds_alpha", () => cluster.features("node2").active.includes("ds_alpha"), 60_000, 500);
      assert.deepEqual(cluster.features("node1").active.filter((f) => f.startsWith("ds_")), [], "node1 holds nothing, advertises nothing");
      const statusOf = (node: string) => JSON.parse(cluster.inside(cluster.nodes.find((n) => n.name === node)?.pid as number, [process.execPath, CLI, "status", "--json", "--runtime-dir", nodeDirs(root, node).run])) as { slurm?: { node: string; features: string[]; calls: number } };
      assert.deepEqual(statusOf("node2").slurm?.features, ["ds_alpha"]);

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
      // Without the comment the scheduler's own order stands (node1 first): the preference is what moved them.
      const plain = cluster.sbatch(["--output", path.join(out, "plain.out"), "--wrap", "hostname"]);
      await waitUntil(`job ${plain} done`, () => cluster.jobs().find((j) => j.job_id === plain)?.job_state === "COMPLETED", 60_000, 500);
      assert.equal(readFileSync(path.join(out, "plain.out"), "utf8").trim(), "node1");

      // Evicted on node 2 (the pin dropped by a reload, then `scratch_manager evict`): the feature goes, within the batching interval.
      const node2 = cluster.nodes.find((n) => n.name === "node2");
      assert.ok(node2);
      writeConfig("node2", {});
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
