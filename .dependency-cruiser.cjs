/**
 * The layers of src/ (docs/architecture.md), checked by `npm run lint`:
 * no import cycle anywhere; lib/ imports nothing of the project; observe/
 * imports nothing from plan/ or act/.
 * @type {import('dependency-cruiser').IConfiguration}
 */
module.exports = {
  forbidden: [
    { name: "no-cycle", severity: "error", comment: "An import cycle: the files cannot be read, tested or changed one at a time.", from: {}, to: { circular: true } },
    { name: "lib-is-a-leaf", severity: "error", comment: "src/lib/ holds generic helpers (the clock, running programs, files): it imports nothing of the project.", from: { path: "^src/lib/" }, to: { path: "^src/", pathNot: "^src/lib/" } },
    { name: "observe-before-plan", severity: "error", comment: "observe/ reads the machine; what to do about it is plan/'s, and doing it act/'s.", from: { path: "^src/observe/" }, to: { path: "^src/(plan|act)/" } },
  ],
  options: {
    doNotFollow: { path: "node_modules" },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: "tsconfig.json" },
  },
};
