#!/usr/bin/env node
// CI: `npm audit` of the production dependencies; fails on high or critical
// advisories. When the registry (or the mirror CI uses) has no audit endpoint
// — npm answers with an HTTP error instead of a report — the step says so and
// passes: that is "not checked", not "clean". Real findings always fail.
// Usage: node .ci/audit.mjs [--from report.json]   (--from: check a saved `npm audit --json` output)
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

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
let report;
try {
  report = JSON.parse(raw);
} catch {
  console.error('ci: npm audit gave no JSON report; audit endpoint unavailable, NOT CHECKED');
  process.exit(0);
}
const counts = report.metadata?.vulnerabilities;
if (!counts) {
  const why = report.message ?? report.error?.summary ?? 'no report';
  console.error(`ci: npm audit endpoint unavailable (${why}); dependencies NOT CHECKED`);
  process.exit(0);
}
const bad = (counts.high ?? 0) + (counts.critical ?? 0);
console.log(`ci: npm audit (production dependencies): ${JSON.stringify(counts)}`);
if (bad > 0) {
  for (const [name, v] of Object.entries(report.vulnerabilities ?? {})) {
    if (v.severity === 'high' || v.severity === 'critical') console.error(`ci:   ${v.severity} ${name} ${v.range ?? ''}`);
  }
  console.error('ci: high/critical advisories in production dependencies');
  process.exit(1);
}
