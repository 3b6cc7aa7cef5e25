/**
 * `npm run bench -- <name>`: runs test/bench/<name>.ts, whose `run()` prints its figures beside the
 * peer's from the same run. Benchmarks are never part of `npm test`.
 */
import { readdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const names = readdirSync(here)
  .filter((f) => f.endsWith('.ts') && f !== 'run.ts' && !f.endsWith('.test.ts'))
  .map((f) => f.slice(0, -3))
  .sort();
const name = process.argv[2];
if (!name || !names.includes(name)) {
  process.stderr.write(`usage: npm run bench -- <name> [args]\nbenchmarks: ${names.join(', ')}\n`);
  process.exit(2);
}
const mod = (await import(`./${name}.ts`)) as { run: (args: string[]) => Promise<void> };
await mod.run(process.argv.slice(3));
