/** Renders the server configs from the handlebars templates shipped in appliance/templates. */
import Handlebars from 'handlebars';
import { existsSync, promises as fsp } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BridgeError } from '../../../shared/src/errors.js';

/** appliance/templates, found from both the sources (tsx) and the build (dist/appliance/src/...). */
function templatesDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    for (const candidate of [join(dir, 'templates'), join(dir, 'appliance', 'templates')]) {
      if (existsSync(join(candidate, 'smb.conf.tmpl'))) return candidate;
    }
    dir = dirname(dir);
  }
  throw new BridgeError('ENOENT', 'cannot find appliance/templates next to the agent');
}

const hb = Handlebars.create();
hb.registerHelper('join', (list: unknown) => (Array.isArray(list) ? list.join(' ') : ''));
const cache = new Map<string, Handlebars.TemplateDelegate>();

/** Values land in config files verbatim: refuse anything that could break out of its line. */
function checkValues(value: unknown, where: string): void {
  if (typeof value === 'string' && /[\n\r]/.test(value)) throw new BridgeError('EINVAL', `${where}: value contains a line break`);
  if (Array.isArray(value)) value.forEach((v, i) => checkValues(v, `${where}[${i}]`));
  else if (value && typeof value === 'object') for (const [k, v] of Object.entries(value)) checkValues(v, `${where}.${k}`);
}

export async function render(name: string, context: Record<string, unknown>): Promise<string> {
  checkValues(context, name);
  let t = cache.get(name);
  if (!t) {
    t = hb.compile(await fsp.readFile(join(templatesDir(), name), 'utf8'), { noEscape: true });
    cache.set(name, t);
  }
  return t(context);
}
