/** The files the package ships next to the program: the example config and the unit. */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { CONFIG_KEYS, parseConfigText, validateConfig } from "../../src/config.js";

const TOP = fileURLToPath(new URL("../../../", import.meta.url));
const conf = readFileSync(`${TOP}scratch_manager.conf`, "utf8");
const unit = readFileSync(`${TOP}scratch_manager.service`, "utf8");

describe("scratch_manager.conf", () => {
  test("parses and validates as it ships", () => {
    const config = validateConfig(parseConfigText(conf, "scratch_manager.conf"));
    assert.deepEqual(config.capacity, { kind: "percent", percent: 25 });
  });
  for (const key of CONFIG_KEYS) {
    test(`documents ${key}, set or commented out`, () => {
      assert.match(conf, new RegExp(`^;?${key} = `, "m"));
    });
  }
  test("every commented-out default parses too", () => {
    const uncommented = conf.replace(/^;(\w+ = )/gm, "$1");
    const raw = parseConfigText(uncommented, "scratch_manager.conf");
    assert.deepEqual(Object.keys(raw).sort(), [...CONFIG_KEYS].sort());
    validateConfig(raw);
  });
});

describe("scratch_manager.service", () => {
  const line = (key: string) => unit.split("\n").filter((l) => l.startsWith(`${key}=`));
  test("starts the packaged launcher with the system config", () => {
    assert.deepEqual(line("ExecStart"), ["ExecStart=/usr/bin/scratch_manager --config /etc/scratch_manager.conf"]);
  });
  test("restarts on failure, but not on a configuration error (exit 2)", () => {
    assert.deepEqual(line("Restart"), ["Restart=on-failure"]);
    assert.deepEqual(line("RestartPreventExitStatus"), ["RestartPreventExitStatus=2"]);
  });
  test("Type=notify with a watchdog; systemd-notify is a child, hence NotifyAccess=all", () => {
    assert.deepEqual(line("Type"), ["Type=notify"]);
    assert.deepEqual(line("NotifyAccess"), ["NotifyAccess=all"]);
    assert.equal(line("WatchdogSec").length, 1);
  });
  test("reload checks the file first (a bad one fails `systemctl reload`), then sends SIGHUP", () => {
    assert.deepEqual(line("ExecReload"), ["ExecReload=/usr/bin/scratch_manager check --quiet --config /etc/scratch_manager.conf", "ExecReload=kill -HUP $MAINPID"]);
  });
  test("SIGTERM goes to the daemon alone, which cancels its own copies", () => {
    assert.deepEqual(line("KillMode"), ["KillMode=mixed"]);
  });
  test("no option that would hide its mounts from jobs in a private mount namespace", () => {
    for (const key of ["PrivateTmp", "ProtectSystem", "ProtectHome", "PrivateMounts", "ReadOnlyPaths"]) assert.deepEqual(line(key), [], key);
  });
});
