import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/**
 * flashverify's version, from the package.json beside `dist/` or `src/` (the repository, or the Docker image, which
 * copies it): `flashverify --version`, the start-up log line and `flashverify_build_info`. "unknown" without one.
 */
export const VERSION: string = (() => {
  try {
    const pkg = JSON.parse(readFileSync(fileURLToPath(new URL('../package.json', import.meta.url)), 'utf8')) as { name?: string; version?: string };
    return pkg.name === 'flashverify' && typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
})();
