#!/usr/bin/env node
// Bundles the daemon (build/src/cli.js, from `npm run build`) and its npm
// dependencies into one ES module for the packages, with esbuild, and writes
// the licence files that go with it:
//   <outdir>/scratch_manager.mjs        the program (node >= 18, no node_modules)
//   <outdir>/copyright                  Debian machine-readable copyright file
//   <outdir>/THIRD-PARTY-LICENSES.txt   the bundled packages and their licence texts
//   <outdir>/license-expression         SPDX expression of the whole, for the rpm
//
// usage: node packaging/bundle.mjs --entry build/src/cli.js --outdir DIR --version X.Y.Z
import { chmodSync, existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import * as esbuild from "esbuild";

const TOP = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const { values: args } = parseArgs({
  options: {
    entry: { type: "string", default: "build/src/cli.js" },
    outdir: { type: "string" },
    version: { type: "string" },
  },
});
if (!args.outdir || !args.version) {
  console.error("usage: bundle.mjs --entry build/src/cli.js --outdir DIR --version X.Y.Z");
  process.exit(2);
}
const outdir = resolve(args.outdir);
const version = args.version;
mkdirSync(outdir, { recursive: true });

// src/cli.ts reads its version from ../../package.json next to build/src/cli.js,
// a file the package does not install. Two ways to give the bundle its version:
// - if the CLI declares the global SCRATCH_MANAGER_VERSION (the preferred form,
//   `declare const SCRATCH_MANAGER_VERSION: string | undefined`), --define sets it;
// - otherwise the one expression that reads package.json is replaced by the
//   version as a JSON string, and the build fails if that expression is not
//   found exactly once (so a change to src/cli.ts cannot silently break it).
const VERSION_GLOBAL = "SCRATCH_MANAGER_VERSION";
const READ_PACKAGE_JSON = /readFileSync\(\s*new URL\(\s*["']\.\.\/\.\.\/package\.json["']\s*,\s*import\.meta\.url\s*\)\s*,\s*["']utf-?8["']\s*\)/g;
let versionHow = "";
const versionPlugin = {
  name: "scratch-manager-version",
  setup(build) {
    build.onLoad({ filter: /[\\/]src[\\/]cli\.js$/ }, (a) => {
      const code = readFileSync(a.path, "utf8");
      if (code.includes(VERSION_GLOBAL)) {
        versionHow = `--define ${VERSION_GLOBAL}`;
        return { contents: code, loader: "js" };
      }
      const hits = code.match(READ_PACKAGE_JSON) ?? [];
      if (hits.length !== 1) {
        return {
          errors: [
            {
              text:
                `expected exactly one readFileSync(new URL("../../package.json", import.meta.url), "utf8") in ${relative(TOP, a.path)}, found ${hits.length}; ` +
                `declare the global ${VERSION_GLOBAL} there instead (see packaging/README.md)`,
            },
          ],
        };
      }
      versionHow = "package.json read replaced by a constant";
      return { contents: code.replace(READ_PACKAGE_JSON, JSON.stringify(JSON.stringify({ version }))), loader: "js" };
    });
  },
};

const result = await esbuild.build({
  entryPoints: [resolve(TOP, args.entry)],
  outfile: join(outdir, "scratch_manager.mjs"),
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node18",
  // The CommonJS dependencies (pino, commander, ...) call require() for Node's
  // own modules; an ES module has no require, so give it one.
  banner: {
    js: [
      `// scratch_manager ${version}: the daemon and its npm dependencies, bundled by esbuild.`,
      "// Licences of the bundled packages: /usr/share/doc/scratch-manager/copyright (deb),",
      "// THIRD-PARTY-LICENSES.txt (rpm).",
      'import { createRequire as __scratchManagerCreateRequire } from "node:module";',
      "const require = __scratchManagerCreateRequire(import.meta.url);",
    ].join("\n"),
  },
  define: { [VERSION_GLOBAL]: JSON.stringify(version) },
  legalComments: "eof",
  charset: "utf8",
  metafile: true,
  logLevel: "warning",
  plugins: [versionPlugin],
});
if (!versionHow) throw new Error("bundle.mjs: src/cli.js was not part of the bundle; is --entry right?");
// The bundle is run as `node scratch_manager.mjs` by /usr/bin/scratch_manager:
// drop the #! line that esbuild carries over from src/cli.ts (a library file
// with #! but no execute bit is what lintian calls script-not-executable).
const bundlePath = join(outdir, "scratch_manager.mjs");
writeFileSync(bundlePath, readFileSync(bundlePath, "utf8").replace(/^#![^\n]*\n/, ""), { mode: 0o644 });
chmodSync(bundlePath, 0o644);

// ---- licences of what went into the bundle ---------------------------------
const packages = new Map(); // name -> directory
for (const input of Object.keys(result.metafile.inputs)) {
  const m = /(?:^|\/)node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(input);
  if (m) packages.set(m[1], join(TOP, input.slice(0, m.index + m[0].length)));
}
const licenseFileOf = (dir) => readdirSync(dir).find((f) => /^(licen[cs]e|copying)(\.|$)/i.test(f));
// "Copyright (c) 2016 Name", "Copyright Name", "(c) 2020 Name", "© 2020 Name"; not
// licence prose ("copyright license to reproduce", "(c) You must retain") nor
// the Apache template ("Copyright [yyyy] [name of copyright owner]").
const isCopyrightLine = (l) =>
  /^\s*(?:[-*]\s*)?(copyright\s+(\(c\)\s*|©\s*)?[\w"'<]|\(c\)\s*\d|©\s*\d)/i.test(l) && !/\[|\bnotice\b|\bholders?\b|\blicen[cs]e\b|\bowner\b/i.test(l);

const deps = [...packages.entries()]
  .sort(([a], [b]) => a.localeCompare(b))
  .map(([name, dir]) => {
    const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
    const license = typeof pkg.license === "string" ? pkg.license : pkg.license?.type;
    if (!license) throw new Error(`bundle.mjs: ${name} declares no licence`);
    const file = licenseFileOf(dir);
    const text = file ? readFileSync(join(dir, file), "utf8").replace(/\r\n/g, "\n").trim() : "";
    let copyright = text.split("\n").filter(isCopyrightLine).map((l) => l.trim().replace(/^[-*]\s*/, ""));
    if (copyright.length === 0) {
      const author = typeof pkg.author === "string" ? pkg.author : pkg.author?.name;
      copyright = [author ? `${author}` : `the ${name} authors`];
    }
    return { name, version: pkg.version, license, text, copyright };
  });

const own = readFileSync(join(TOP, "LICENSE.txt"), "utf8").replace(/\r\n/g, "\n").trim();
// The project's own licence, as package.json names it (CECILL-C: the original's, which a port carries).
const ownId = JSON.parse(readFileSync(join(TOP, "package.json"), "utf8")).license;
const ownCopyright = own.split("\n").filter(isCopyrightLine).map((l) => l.trim());
// Texts of the licences, from a package that uses it, without its copyright lines.
const COMMON = { "Apache-2.0": "Apache-2.0", "GPL-2.0": "GPL-2", "GPL-3.0": "GPL-3", "LGPL-2.1": "LGPL-2.1", "MPL-2.0": "MPL-2.0" };
const licenseTexts = new Map([[ownId, own]]);
for (const d of deps) if (!licenseTexts.has(d.license) && d.text) licenseTexts.set(d.license, d.text);
for (const id of new Set(deps.map((d) => d.license))) {
  if (!licenseTexts.has(id) && !COMMON[id]) throw new Error(`bundle.mjs: no licence text for ${id}; add one`);
}
const bodyOf = (id) => {
  if (COMMON[id] && existsSync(`/usr/share/common-licenses/${COMMON[id]}`)) {
    return `On Debian systems, the complete text of the license is in /usr/share/common-licenses/${COMMON[id]}.`;
  }
  return licenseTexts
    .get(id)
    .split("\n")
    .filter((l) => !isCopyrightLine(l))
    .join("\n")
    .replace(/^(the )?(mit|isc) licen[cs]e\s*\n/i, "")
    .trim();
};
const dep5Text = (t) => t.split("\n").map((l) => (l.trim() === "" ? " ." : ` ${l}`)).join("\n");
const ids = [...new Set([ownId, ...deps.map((d) => d.license)])];

const copyright = [
  "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/",
  "Upstream-Name: scratch_manager",
  "Comment: /usr/lib/scratch_manager/scratch_manager.mjs bundles the program with",
  " the npm packages listed below (node_modules/...), each under its own licence.",
  "",
  "Files: *",
  `Copyright: ${ownCopyright.map((c) => c.replace(/^copyright\s+(\(c\)\s*)?/i, "")).join("\n           ")}`,
  `License: ${ownId}`,
  ...deps.flatMap((d) => [
    "",
    `Files: node_modules/${d.name}/*`,
    `Copyright: ${d.copyright.map((c) => c.replace(/^copyright\s+(\(c\)\s*)?/i, "")).join("\n           ")}`,
    `License: ${d.license}`,
    `Comment: ${d.name} ${d.version}`,
  ]),
  ...ids.flatMap((id) => ["", `License: ${id}`, dep5Text(bodyOf(id))]),
  "",
].join("\n");
writeFileSync(join(outdir, "copyright"), copyright);

const notices = [
  `scratch_manager ${version} bundles these npm packages into scratch_manager.mjs:`,
  "",
  ...deps.map((d) => `  ${d.name} ${d.version} (${d.license})`),
  "",
  ...deps.flatMap((d) => ["=".repeat(78), `${d.name} ${d.version} (${d.license})`, "", d.text || `${d.copyright.join("\n")}\n\n${bodyOf(d.license)}`, ""]),
].join("\n");
writeFileSync(join(outdir, "THIRD-PARTY-LICENSES.txt"), notices);
writeFileSync(join(outdir, "license-expression"), `${ids.join(" AND ")}\n`);

console.log(`bundle: ${relative(process.cwd(), join(outdir, "scratch_manager.mjs"))}, version ${version} (${versionHow}), ${deps.length} npm packages: ${deps.map((d) => d.name).join(", ")}`);
