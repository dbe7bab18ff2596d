import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { ConfigError } from '../errors/app-error.js';
import { configObjectSchema, configSchema, DEFAULT_THREAD_POOL_SIZE, webhooksSchema, withCrossChecks, type Config } from './schema.js';

/** `config/default.yaml` of the installed package (works from src/ and dist/). */
export const DEFAULT_CONFIG_FILE = fileURLToPath(new URL('../../config/default.yaml', import.meta.url));

export interface LoadOptions {
  /** YAML file layered over the defaults (`--config FILE`); else FLASHVERIFY_CONFIG. */
  file?: string;
  /** Environment to read overrides from (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Extra overrides layered last (tests). */
  overrides?: DeepPartial<Config>;
}

export type DeepPartial<T> = T extends readonly (infer U)[]
  ? DeepPartial<U>[]
  : T extends object
    ? { [K in keyof T]?: DeepPartial<T[K]> }
    : T;

/**
 * Loads defaults, then the named YAML file, then environment variables, then
 * `overrides`; validates the result once and returns it frozen. Throws a
 * ConfigError listing every problem (the CLI prints it and exits non-zero).
 */
export function loadConfig(options: LoadOptions = {}): Readonly<Config> {
  const env = options.env ?? process.env;
  const issues: string[] = [];
  let merged: unknown = readYaml(DEFAULT_CONFIG_FILE, issues);
  const file = options.file ?? env.FLASHVERIFY_CONFIG;
  /** Paths of the file's values that were one `${NAME}` and nothing else: typed as the schema wants (typedReferences). */
  const references = new Set<string>();
  if (file) merged = deepMerge(merged, expandEnv(readYaml(resolve(file), issues), env, issues, [], references));
  const fromEnv = new Map<string, string>();
  merged = deepMerge(merged, envOverrides(env, issues, fromEnv));
  if (options.overrides) merged = deepMerge(merged, options.overrides);
  const threadPool = threadPoolSize(env, issues);

  // webhooks.maxLookups is bounded by the thread pool this process will have.
  const schema = threadPool === DEFAULT_THREAD_POOL_SIZE ? configSchema : withCrossChecks(configObjectSchema.extend({ webhooks: webhooksSchema(threadPool) }));
  let result = schema.safeParse(merged);
  if (!result.success && typedReferences(merged, result.error.issues, references)) result = schema.safeParse(merged);
  // Every problem at once: those of the file and the environment, then the schema's, but for a key already named (an
  // unset ${VAR} left in a value the schema would refuse again).
  const named = new Set(issues.map((i) => i.slice(0, i.indexOf(': '))));
  if (!result.success) {
    for (const i of result.error.issues) {
      const key = i.path.length ? i.path.join('.') : '(root)';
      if (named.has(key)) continue;
      const source = fromEnv.get(key);
      issues.push(`${key}: ${i.message}${source === undefined ? '' : ` (set by ${source})`}`);
    }
  }
  if (issues.length > 0 || !result.success) throw new ConfigError(issues);
  return deepFreeze(result.data);
}

/**
 * `${NAME}` in a string of the config file is the environment variable NAME (so secrets such as a trunk's or an
 * SMSC's password can come from the environment, e.g. a Kubernetes secret, while the file stays in version control);
 * `${NAME:-default}` uses `default` when NAME is unset or empty; `$${` is a literal `${`. A variable that is not set
 * (without a default) is an issue naming the key and the variable, never an empty value. Keys are not expanded.
 */
export function expandEnv(
  value: unknown,
  env: NodeJS.ProcessEnv,
  issues: string[],
  path: (string | number)[],
  references?: Set<string>,
): unknown {
  if (typeof value === 'string') {
    if (!value.includes('${')) return value;
    if (/^\$\{[^}]*\}$/.test(value)) references?.add(path.join('.'));
    return value.replace(/\$(\$?)\{([^}]*)\}/g, (whole: string, escaped: string, inner: string) => {
      if (escaped) return whole.slice(1);
      const m = /^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$/s.exec(inner);
      const key = path.join('.') || '(root)';
      if (!m) {
        issues.push(`${key}: "\${${inner}}" is not an environment variable reference (\${NAME} or \${NAME:-default}; $\${ for a literal \${)`);
        return whole;
      }
      const [, name, fallback] = m as unknown as [string, string, string | undefined];
      const v = env[name];
      if (v !== undefined && (v !== '' || fallback === undefined)) return v;
      if (fallback !== undefined) return fallback;
      issues.push(`${key}: environment variable ${name} is not set (the config file says \${${name}})`);
      return whole;
    });
  }
  if (Array.isArray(value)) return value.map((v, i) => expandEnv(v, env, issues, [...path, i], references));
  if (isPlainObject(value)) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, expandEnv(v, env, issues, [...path, k], references)]));
  return value;
}

/**
 * A value that was one `${NAME}` (`cps: ${CPS}`) is the variable's text; where the schema wants a number or a boolean
 * and the text is one (`50`, `true`), it is taken as that, in `merged`, as YAML would have read it written there.
 * Elsewhere (a password of digits) it stays text. True when something was changed (validate again).
 */
function typedReferences(merged: unknown, problems: readonly { code: string; path: PropertyKey[]; expected?: unknown }[], references: ReadonlySet<string>): boolean {
  let changed = false;
  for (const p of problems) {
    // A number or boolean setting (invalid_type), or one of several forms (invalid_union: 0 or 1, false or a list).
    const wanted = p.code === 'invalid_union' ? 'either' : p.code === 'invalid_type' && (p.expected === 'number' || p.expected === 'boolean') ? p.expected : undefined;
    if (wanted === undefined || !references.has(p.path.join('.'))) continue;
    let parent: unknown = merged;
    for (const k of p.path.slice(0, -1)) parent = isPlainObject(parent) || Array.isArray(parent) ? (parent as Record<PropertyKey, unknown>)[k as string] : undefined;
    const last = p.path[p.path.length - 1] as string;
    if (!isPlainObject(parent) && !Array.isArray(parent)) continue;
    const text = (parent as Record<string, unknown>)[last];
    if (typeof text !== 'string') continue;
    const t = text.trim();
    const number = /^-?\d+(\.\d+)?$/.test(t) ? Number(t) : undefined;
    const boolean = t === 'true' ? true : t === 'false' ? false : undefined;
    const typed = wanted === 'number' ? number : wanted === 'boolean' ? boolean : (number ?? boolean);
    if (typed === undefined) continue;
    (parent as Record<string, unknown>)[last] = typed;
    changed = true;
  }
  return changed;
}

function readYaml(path: string, issues: string[]): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    issues.push(`${path}: cannot read (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
    return {};
  }
  try {
    return parseYaml(text) ?? {};
  } catch (err) {
    issues.push(`${path}: not valid YAML (${(err as Error).message.split('\n')[0]})`);
    return {};
  }
}

/**
 * libuv's thread pool size as this process will have it: UV_THREADPOOL_SIZE, read by libuv when the pool is first
 * used, else 4; libuv takes at most 1024, and anything that is not a number from 1 (an empty value too) as 1, which
 * would leave a hung DNS lookup the only thread: refused here instead.
 */
function threadPoolSize(env: NodeJS.ProcessEnv, issues: string[]): number {
  const raw = env.UV_THREADPOOL_SIZE;
  if (raw === undefined) return DEFAULT_THREAD_POOL_SIZE;
  if (!/^\d+$/.test(raw) || Number(raw) < 1) {
    issues.push(`UV_THREADPOOL_SIZE: must be a whole number of threads, at least 1 (libuv runs one thread otherwise), got "${raw}"`);
    return DEFAULT_THREAD_POOL_SIZE;
  }
  return Math.min(1024, Number(raw));
}

/** Overrides from the environment; `fromEnv` gets each config key set, with the variable it came from. */
function envOverrides(env: NodeJS.ProcessEnv, issues: string[], fromEnv: Map<string, string>): Record<string, unknown> {
  const out: Record<string, Record<string, unknown>> = {};
  const set = (section: string, key: string, value: unknown, variable: string): void => {
    out[section] = { ...(out[section] ?? {}), [key]: value };
    fromEnv.set(`${section}.${key}`, variable);
  };
  const int = (name: string): number | undefined => {
    const raw = env[name];
    if (raw === undefined || raw === '') return undefined;
    if (!/^\d+$/.test(raw)) {
      issues.push(`${name}: must be a whole number, got "${raw}"`);
      return undefined;
    }
    return Number(raw);
  };
  if (env.REDIS_URL) set('redis', 'url', env.REDIS_URL, 'REDIS_URL');
  if (env.REDIS_PREFIX) set('redis', 'prefix', env.REDIS_PREFIX, 'REDIS_PREFIX');
  if (env.REDIS_CLUSTER) {
    if (/^(true|1|yes)$/i.test(env.REDIS_CLUSTER)) set('redis', 'cluster', true, 'REDIS_CLUSTER');
    else if (/^(false|0|no)$/i.test(env.REDIS_CLUSTER)) set('redis', 'cluster', false, 'REDIS_CLUSTER');
    else issues.push(`REDIS_CLUSTER: must be true or false, got "${env.REDIS_CLUSTER}"`);
  }
  const port = int('PORT');
  if (port !== undefined) set('http', 'port', port, 'PORT');
  if (env.HOST) set('http', 'host', env.HOST, 'HOST');
  if (env.FLASHVERIFY_MASTER_KEY) set('security', 'masterKey', env.FLASHVERIFY_MASTER_KEY, 'FLASHVERIFY_MASTER_KEY');
  if (env.FLASHVERIFY_ADMIN_TOKEN !== undefined) set('admin', 'token', env.FLASHVERIFY_ADMIN_TOKEN, 'FLASHVERIFY_ADMIN_TOKEN');
  if (env.LOG_LEVEL) set('log', 'level', env.LOG_LEVEL, 'LOG_LEVEL');
  // Two processes of one host (a worker and a `--role webhooks` one) need their own operator listener port.
  const metricsPort = int('METRICS_PORT');
  if (metricsPort !== undefined) set('metrics', 'port', metricsPort, 'METRICS_PORT');
  const sipPort = int('SIP_LISTEN_PORT');
  if (sipPort !== undefined) {
    out.sip = { ...(out.sip ?? {}), listen: { port: sipPort } };
    fromEnv.set('sip.listen.port', 'SIP_LISTEN_PORT');
  }
  if (env.SIP_TRUNK_URI) {
    out.sip = { ...(out.sip ?? {}), [TRUNK_URI]: env.SIP_TRUNK_URI };
    fromEnv.set('sip.trunks.0.uri', 'SIP_TRUNK_URI');
  }
  if (env.SMPP_URL) set('sms', 'url', env.SMPP_URL, 'SMPP_URL');
  return out;
}

/**
 * The key under `sip` of SIP_TRUNK_URI's patch of the first trunk: a symbol, which no config file can write (a file's
 * `sip.trunkUri` is an unknown key like any other).
 */
const TRUNK_URI = Symbol('SIP_TRUNK_URI');

/** Objects merge key by key; arrays and scalars replace. SIP_TRUNK_URI's patch (TRUNK_URI) sets the first trunk's URI. */
function deepMerge(base: unknown, over: unknown): unknown {
  if (!isPlainObject(base) || !isPlainObject(over)) return over === undefined ? base : over;
  const result: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(over)) result[key] = deepMerge(result[key], value);
  const trunkUri = (over as Record<symbol, unknown>)[TRUNK_URI];
  if (trunkUri !== undefined && Array.isArray(result.trunks)) {
    const [first, ...rest] = result.trunks as unknown[];
    result.trunks = [{ ...(isPlainObject(first) ? first : {}), uri: trunkUri }, ...rest];
  }
  return result;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const child of Object.values(value)) deepFreeze(child);
    Object.freeze(value);
  }
  return value;
}
