#!/usr/bin/env node
// CI: `npm audit` of the production dependencies. Fails closed:
//   - a report with any high or critical advisory           -> exit 1
//   - a report with none                                    -> exit 0 ("clean")
//   - npm's error report for a registry WITHOUT the audit endpoint, and only that:
//     HTTP 404, 405 or 501 answered to POST <registry>/-/npm/v1/security/advisories/bulk
//     or /-/npm/v1/security/audits[/quick]                  -> exit 0, "NOT CHECKED"
//   - anything else (no JSON, a network error, another HTTP status, a report
//     without metadata.vulnerabilities)                     -> exit 1
// Usage: node .ci/audit.mjs [--from report.json]   (--from: check a saved `npm audit --json` output)
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

/** HTTP statuses that mean "this registry has no audit endpoint". */
const MISSING_ENDPOINT_STATUS = new Set([404, 405, 501]);
const AUDIT_ENDPOINT = /\/-\/npm\/v1\/security\/(advisories\/bulk|audits(\/quick)?)$/;

/**
 * Classifies `npm audit --json` output.
 * @param {string} raw
 * @returns {{ verdict: 'clean' | 'vulnerable' | 'not_checked' | 'error', lines: string[] }}
 */
function classify(raw) {
  let report;
  try {
    report = JSON.parse(raw);
  } catch {
    return { verdict: 'error', lines: ['ci: npm audit gave no JSON report; failing (only a missing audit endpoint is tolerated)'] };
  }
  const counts = report?.metadata?.vulnerabilities;
  if (counts && typeof counts === 'object') {
    const lines = [`ci: npm audit (production dependencies): ${JSON.stringify(counts)}`];
    const bad = Number(counts.high ?? 0) + Number(counts.critical ?? 0);
    if (bad === 0) return { verdict: 'clean', lines };
    for (const [name, v] of Object.entries(report.vulnerabilities ?? {})) {
      if (v?.severity === 'high' || v?.severity === 'critical') lines.push(`ci:   ${v.severity} ${name} ${v.range ?? ''}`);
    }
    lines.push('ci: high/critical advisories in production dependencies');
    return { verdict: 'vulnerable', lines };
  }
  const status = Number(report?.statusCode);
  const uri = typeof report?.uri === 'string' ? report.uri : '';
  if (MISSING_ENDPOINT_STATUS.has(status) && AUDIT_ENDPOINT.test(uri)) {
    return { verdict: 'not_checked', lines: [`ci: npm audit endpoint unavailable (HTTP ${status} from ${uri}); dependencies NOT CHECKED`] };
  }
  const why = report?.message || report?.error?.summary || report?.error?.code || 'no vulnerability counts in the report';
  return { verdict: 'error', lines: [`ci: npm audit failed (${why}); failing (only a missing audit endpoint is tolerated)`] };
}

const fromIdx = process.argv.indexOf('--from');
let raw;
if (fromIdx > 0) raw = readFileSync(process.argv[fromIdx + 1], 'utf8');
else {
  try {
    raw = execFileSync('npm', ['audit', '--omit=dev', '--json'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    raw = err.stdout ?? '';
  }
}
const { verdict, lines } = classify(raw);
const out = verdict === 'clean' ? console.log : console.error;
for (const line of lines) out(line);
process.exit(verdict === 'clean' || verdict === 'not_checked' ? 0 : 1);
