// The man page's CONFIGURATION KEYS section, in roff, from the one table of
// keys (src/config.ts, built to build/src/config.js): packaging/build.sh puts
// it in place of @KEYS@ in scratch_manager.8.in.
import { CONFIG_TABLE } from "../build/src/config.js";

const roff = (text) => text.replace(/\\/g, "\\e").replace(/-/g, "\\-");

for (const k of CONFIG_TABLE) {
  const flag = k.flag ? ` (option ${k.flag.split(" ")[0]})` : "";
  const fallback = k.required ? "required" : k.default ? `default ${k.default}` : "unset by default";
  console.log(".TP");
  console.log(`.B ${roff(k.key)}`);
  console.log(`${roff(k.help)}; ${roff(fallback)}${roff(flag)}.`);
}
