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
      // Only src/act/exec.ts may start programs: one place that enforces
      // execFile with an argument array and a timeout, never a shell.
      "no-restricted-imports": [
        "error",
        {
          paths: [
            { name: "child_process", message: "Run programs through src/act/exec.ts." },
            { name: "node:child_process", message: "Run programs through src/act/exec.ts." },
          ],
        },
      ],
    },
  },
  {
    files: ["src/act/exec.ts", "test/**", "bench/**", "packaging/**"],
    rules: { "no-restricted-imports": "off" },
  },
  {
    files: ["src/cli.ts", "src/commands/**", "test/**", "bench/**", "packaging/**"],
    rules: { "no-console": "off" },
  },
);
