/** A worker thread of the simulation pool (tasks.ts): runs one task per message. */
import { parentPort } from "node:worker_threads";
import { runTask, type Task } from "./tasks.js";

parentPort?.on("message", (task: Task) => {
  parentPort?.postMessage(runTask(task));
});
