/**
 * The Reason header (RFC 3326) of a final response: the Q.850 cause a carrier's gateway gives for the call's release
 * (`Reason: Q.850;cause=17;text="User busy"`), which says more than the SIP status (a 404 with cause 1 is an unallocated
 * number, with cause 3 no route to it; a 503 with cause 34 no circuit available). Reported with the call's outcome.
 */
import { splitCommaList } from './parser.js';

export interface Q850Cause {
  /** ITU-T Q.850 cause value, 1-127. */
  cause: number;
  /** The `text` parameter, unquoted, printable ASCII only, at most 80 characters. */
  text?: string;
}

/** The Q.850 cause among a response's Reason header values (several headers, or one comma-separated), if any. */
export function q850Cause(values: readonly string[]): Q850Cause | undefined {
  for (const value of values) {
    for (const item of splitCommaList(value)) {
      const [protocol, ...params] = splitParams(item);
      if (protocol?.trim().toUpperCase() !== 'Q.850') continue;
      let cause: number | undefined;
      let text: string | undefined;
      for (const p of params) {
        const eq = p.indexOf('=');
        if (eq < 0) continue;
        const name = p.slice(0, eq).trim().toLowerCase();
        const v = p.slice(eq + 1).trim();
        if (name === 'cause' && /^\d{1,3}$/.test(v) && Number(v) >= 1 && Number(v) <= 127) cause = Number(v);
        if (name === 'text') text = cleanText(v);
      }
      if (cause !== undefined) return text ? { cause, text } : { cause };
    }
  }
  return undefined;
}

/** `Q.850;cause=16;text="a;b"` → ['Q.850', 'cause=16', 'text="a;b"']: semicolons inside quotes do not split. */
function splitParams(item: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (let i = 0; i < item.length; i++) {
    const c = item[i]!;
    if (c === '\\' && quoted && i + 1 < item.length) {
      cur += c + item[++i];
      continue;
    }
    if (c === '"') quoted = !quoted;
    if (c === ';' && !quoted) {
      out.push(cur);
      cur = '';
    } else {
      cur += c;
    }
  }
  out.push(cur);
  return out;
}

function cleanText(v: string): string | undefined {
  const unquoted = v.startsWith('"') && v.endsWith('"') && v.length >= 2 ? v.slice(1, -1).replace(/\\(.)/g, '$1') : v;
  // Logged and put in events: printable ASCII only, bounded.
  const clean = unquoted.replace(/[^\x20-\x7e]/g, '').trim().slice(0, 80);
  return clean === '' ? undefined : clean;
}
