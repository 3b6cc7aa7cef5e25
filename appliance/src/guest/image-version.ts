/**
 * The appliance image's version stamp (`<bridge VERSION>+<build hash12>`), written by
 * image-build/build.sh to /etc/bridge-image-version and exported by bridge-init as
 * BRIDGE_IMAGE_VERSION. Outside the appliance there is none.
 */
import { readFileSync } from 'node:fs';

export const IMAGE_VERSION_FILE = '/etc/bridge-image-version';

export function imageVersion(file = IMAGE_VERSION_FILE): string | null {
  const fromEnv = process.env.BRIDGE_IMAGE_VERSION?.trim();
  if (fromEnv) return fromEnv;
  try {
    return readFileSync(file, 'utf8').trim() || null;
  } catch {
    return null;
  }
}
