/**
 * `npm run bench -- <name> [args]`: runs one benchmark from bench/. Each
 * benchmark bounds itself in count and time, uses loopback only, and prints
 * what BENCHMARKS.md records.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const BENCHES: Record<string, string> = {
  voice: 'voice.ts',
};

const [name, ...args] = process.argv.slice(2);
const file = name ? BENCHES[name] : undefined;
if (!file) {
  process.stderr.write(
    `usage: npm run bench -- <${Object.keys(BENCHES).join('|')}> [args]\n` +
      (name ? `no benchmark "${name}" yet (flash, api and sms load benchmarks are still to be written)\n` : ''),
  );
  process.exit(2);
}
const path = fileURLToPath(new URL(file, import.meta.url));
if (!existsSync(path)) throw new Error(`missing ${path}`);
const r = spawnSync(process.execPath, ['--import', 'tsx', path, ...args], { stdio: 'inherit' });
process.exit(r.status ?? 1);
