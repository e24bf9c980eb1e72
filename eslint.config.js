// @ts-check
import js from "@eslint/js";
import tseslint from "typescript-eslint";
import globals from "globals";

export default tseslint.config(
  { ignores: ["build/", "node_modules/", "dist/", "packaging/out/"] },
  js.configs.recommended,
  ...tseslint.configs.strict,
  {
    languageOptions: { globals: { ...globals.node } },
    rules: {
      "@typescript-eslint/no-explicit-any": "error",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_" }],
      "no-console": "error",
      // One clock (src/lib/clock.ts), passed to whatever reads the time: tests set it, and no code mixes an injected "now" with the real one.
      "no-restricted-properties": [
        "error",
        { object: "Date", property: "now", message: "Take a Clock (src/lib/clock.ts) and call clock.now()." },
        { object: "performance", property: "now", message: "Take a Clock (src/lib/clock.ts) and call clock.monotonic()." },
      ],
      "no-restricted-syntax": ["error", { selector: "NewExpression[callee.name='Date'][arguments.length=0]", message: "Take a Clock (src/lib/clock.ts): new Date(clock.now())." }],
      // Only src/lib/exec.ts may start programs: one place that enforces
      // execFile with an argument array and a timeout, never a shell.
      "no-restricted-imports": [
        "error",
        {
          paths: [
            { name: "child_process", message: "Run programs through src/lib/exec.ts." },
            { name: "node:child_process", message: "Run programs through src/lib/exec.ts." },
          ],
        },
      ],
    },
  },
  {
    files: ["src/lib/exec.ts", "test/**", "bench/**", "packaging/**"],
    rules: { "no-restricted-imports": "off" },
  },
  {
    files: ["src/lib/clock.ts", "test/**", "bench/**", "packaging/**"],
    rules: { "no-restricted-properties": "off", "no-restricted-syntax": "off" },
  },
  {
    files: ["src/cli.ts", "src/commands/**", "test/**", "bench/**", "packaging/**"],
    rules: { "no-console": "off" },
  },
);
